#include "collector/store/jetstream_consumer.hpp"

#include <nats/nats.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cinttypes>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "collector/store/jetstream_sink.hpp"
#include "schemas/frame_codec.hpp"
#include "schemas/wire_string.hpp"

namespace vantage::collector::store {

namespace {

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

std::string iso_time(std::int64_t ns) {
  const std::time_t seconds = static_cast<std::time_t>(ns / 1'000'000'000);
  std::tm tm{};
  ::gmtime_r(&seconds, &tm);
  char buffer[40];
  const std::size_t n = std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buffer + n, sizeof buffer - n, ".%03dZ", static_cast<int>((ns / 1'000'000) % 1000));
  return buffer;
}

std::string header(natsMsg* m, const char* key) {
  const char* v = nullptr;
  return natsMsgHeader_Get(m, key, &v) == NATS_OK && v != nullptr ? v : "";
}

struct Connection {
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  natsSubscription* sub = nullptr;
  ~Connection() {
    if (sub != nullptr) natsSubscription_Destroy(sub);
    if (js != nullptr) jsCtx_Destroy(js);
    if (nc != nullptr) natsConnection_Destroy(nc);
  }
};

int fail(const std::string& what, natsStatus s, jsErrCode code = static_cast<jsErrCode>(0)) {
  std::fprintf(stderr, "vantage-collector consume: %s: %s", what.c_str(), natsStatus_GetText(s));
  if (code != 0) std::fprintf(stderr, " (JetStream error %d)", static_cast<int>(code));
  std::fputc('\n', stderr);
  return 1;
}

}  // namespace

int consume_command(std::span<const std::string_view> args, std::FILE* out) {
  std::vector<std::string> servers;
  std::string stream = "VANTAGE", durable;
  bool follow = false;
  std::int64_t timeout_ms = 2000;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    if (arg == "--follow") {
      follow = true;
      continue;
    }
    if (i + 1 >= args.size()) {
      std::fprintf(stderr, "vantage-collector consume: %.*s needs a value\n", static_cast<int>(arg.size()),
                   arg.data());
      return 2;
    }
    const std::string_view value = args[++i];
    if (arg == "--jetstream") {
      servers.emplace_back(value);
    } else if (arg == "--stream") {
      stream = value;
    } else if (arg == "--durable") {
      durable = value;
    } else if (arg == "--timeout") {
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), timeout_ms);
      if (ec != std::errc() || end != value.data() + value.size() || timeout_ms <= 0) {
        std::fprintf(stderr, "vantage-collector consume: --timeout: expected milliseconds\n");
        return 2;
      }
    } else {
      std::fprintf(stderr, "vantage-collector consume: unknown argument '%.*s'\n",
                   static_cast<int>(arg.size()), arg.data());
      return 2;
    }
  }
  if (servers.empty()) {
    std::fprintf(stderr, "vantage-collector consume: --jetstream URL is required\n");
    return 2;
  }

  Connection c;
  natsOptions* opts = nullptr;
  natsStatus s = natsOptions_Create(&opts);
  std::vector<const char*> urls;
  for (const std::string& u : servers) urls.push_back(u.c_str());
  if (s == NATS_OK) s = natsOptions_SetServers(opts, urls.data(), static_cast<int>(urls.size()));
  if (s == NATS_OK) s = natsOptions_SetTimeout(opts, timeout_ms);
  if (s == NATS_OK) s = natsOptions_SetName(opts, "vantage-collector consume");
  if (s == NATS_OK) s = natsConnection_Connect(&c.nc, opts);
  natsOptions_Destroy(opts);
  if (s != NATS_OK) return fail("connect", s);
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = timeout_ms;
  if ((s = natsConnection_JetStream(&c.js, c.nc, &jo)) != NATS_OK) return fail("JetStream context", s);

  jsStreamInfo* info = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  if ((s = js_GetStreamInfo(&info, c.js, stream.c_str(), &jo, &code)) != NATS_OK) {
    return fail("stream " + stream, s, code);
  }
  const std::string subject = info->Config->SubjectsLen > 0 ? info->Config->Subjects[0] : ">";
  const std::uint64_t messages = info->State.Msgs;
  jsStreamInfo_Destroy(info);

  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = stream.c_str();
  so.Config.AckPolicy = js_AckExplicit;
  so.Config.DeliverPolicy = js_DeliverAll;
  // An ephemeral consumer without --durable: it starts at the stream's first message every run.
  if ((s = js_PullSubscribe(&c.sub, c.js, subject.c_str(), durable.empty() ? nullptr : durable.c_str(), &jo,
                            &so, &code)) != NATS_OK) {
    return fail("pull consumer on " + stream, s, code);
  }

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  std::uint64_t read = 0, bad = 0;
  bool caught_up = messages == 0 && durable.empty();
  while (!g_stop && (follow || !caught_up)) {
    natsMsgList list{};
    s = natsSubscription_Fetch(&list, c.sub, 256, timeout_ms, &code);
    if (s == NATS_TIMEOUT) {
      if (!follow) break;  // nothing more within the timeout: caught up
      continue;
    }
    if (s != NATS_OK) {
      natsMsgList_Destroy(&list);
      return fail("fetch", s, code);
    }
    std::vector<std::uint64_t> aligned;
    for (int i = 0; i < list.Count; ++i) {
      natsMsg* m = list.Msgs[i];
      // NATS hands over the payload at whatever offset follows its headers, and FlatBuffers reads
      // scalars in place: 32-bit ARM faults on a misaligned 64-bit load (SIGBUS). Verify and read
      // an 8-byte-aligned copy.
      const std::size_t length = static_cast<std::size_t>(std::max(natsMsg_GetDataLength(m), 0));
      aligned.assign((length + 7) / 8, 0);
      if (length > 0) std::memcpy(aligned.data(), natsMsg_GetData(m), length);
      const std::span<const std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(aligned.data()),
                                                length);
      jsMsgMetaData* meta = nullptr;
      std::uint64_t stream_seq = 0;
      if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
        stream_seq = meta->Sequence.Stream;
        if (meta->NumPending == 0) caught_up = true;
        jsMsgMetaData_Destroy(meta);
      }
      ++read;
      const wire::Frame* frame = wire::verify_frame(bytes);
      const wire::Batch* batch = frame != nullptr ? frame->message_as_Batch() : nullptr;
      if (batch == nullptr) {
        ++bad;
        std::fprintf(out, "stream_seq=%" PRIu64 " INVALID frame (%zu bytes, Nats-Msg-Id %s)\n", stream_seq,
                     bytes.size(), header(m, kHeaderMsgId).c_str());
      } else {
        const std::string agent = header(m, kHeaderAgent), seq = header(m, kHeaderSeq);
        if (agent != wire::text(batch->agent_id()) || seq != std::to_string(batch->seq())) {
          ++bad;
          std::fprintf(stderr,
                       "vantage-collector consume: stream seq %" PRIu64
                       ": headers say %s/%s, the frame %s/%" PRIu64 "\n",
                       stream_seq, agent.c_str(), seq.c_str(), wire::text(batch->agent_id()).c_str(), batch->seq());
        }
        std::fprintf(out,
                     "stream_seq=%" PRIu64 " agent=%s region=%s pop=%s seq=%" PRIu64
                     " interval=%s+%.3fs latency=%u load=%u\n",
                     stream_seq, wire::text(batch->agent_id()).c_str(), header(m, kHeaderRegion).c_str(),
                     header(m, kHeaderPop).c_str(), batch->seq(),
                     iso_time(batch->interval_start_ns()).c_str(),
                     static_cast<double>(batch->interval_end_ns() - batch->interval_start_ns()) / 1e9,
                     batch->latency() != nullptr ? batch->latency()->size() : 0u,
                     batch->load() != nullptr ? batch->load()->size() : 0u);
      }
      natsMsg_Ack(m, nullptr);
    }
    std::fflush(out);
    natsMsgList_Destroy(&list);
  }
  std::fprintf(stderr, "vantage-collector consume: %" PRIu64 " batches from stream %s (%s)%s\n", read,
               stream.c_str(), subject.c_str(),
               bad > 0 ? (", " + std::to_string(bad) + " failed verification").c_str() : "");
  return bad > 0 ? 1 : 0;
}

}  // namespace vantage::collector::store
