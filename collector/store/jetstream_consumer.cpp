#include "collector/store/jetstream_consumer.hpp"

#include <nats/nats.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "collector/store/jetstream_sink.hpp"

namespace vantage::collector::store {

namespace {

std::string header(natsMsg* m, const char* key) {
  const char* v = nullptr;
  return natsMsgHeader_Get(m, key, &v) == NATS_OK && v != nullptr ? v : "";
}

std::string failure(const std::string& what, natsStatus s, jsErrCode code = static_cast<jsErrCode>(0)) {
  std::string out = what + ": " + natsStatus_GetText(s);
  if (code != 0) out += " (JetStream error " + std::to_string(static_cast<int>(code)) + ")";
  return out;
}

}  // namespace

struct JetStreamConsumer::State {
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  natsSubscription* sub = nullptr;
  std::int64_t timeout_ms = 0;
  std::string subject;
  std::uint64_t messages = 0;
  bool caught_up = false;
  std::vector<std::vector<std::uint64_t>> aligned;  // one per message of the group in hand
  ~State() {
    if (sub != nullptr) natsSubscription_Destroy(sub);
    if (js != nullptr) jsCtx_Destroy(js);
    if (nc != nullptr) natsConnection_Destroy(nc);
  }
};

JetStreamConsumer::JetStreamConsumer(std::unique_ptr<State> state) : state_(std::move(state)) {}
JetStreamConsumer::~JetStreamConsumer() = default;
const std::string& JetStreamConsumer::subject() const noexcept { return state_->subject; }
std::uint64_t JetStreamConsumer::messages_at_open() const noexcept { return state_->messages; }
bool JetStreamConsumer::caught_up() const noexcept { return state_->caught_up; }

Result<std::unique_ptr<JetStreamConsumer>> JetStreamConsumer::open(const ConsumerOptions& options) {
  auto c = std::make_unique<State>();
  c->timeout_ms = options.timeout_ms;
  natsOptions* opts = nullptr;
  natsStatus s = natsOptions_Create(&opts);
  std::vector<const char*> urls;
  for (const std::string& u : options.servers) urls.push_back(u.c_str());
  if (s == NATS_OK) s = natsOptions_SetServers(opts, urls.data(), static_cast<int>(urls.size()));
  if (s == NATS_OK) s = natsOptions_SetTimeout(opts, options.timeout_ms);
  if (s == NATS_OK) s = natsOptions_SetName(opts, "vantage-collector consume");
  if (s == NATS_OK) s = natsConnection_Connect(&c->nc, opts);
  natsOptions_Destroy(opts);
  if (s != NATS_OK) {
    return platform::Status::error(failure("connect", s), platform::Errc::kUnavailable);
  }
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = options.timeout_ms;
  if ((s = natsConnection_JetStream(&c->js, c->nc, &jo)) != NATS_OK) {
    return platform::Status::error(failure("JetStream context", s), platform::Errc::kUnavailable);
  }

  jsStreamInfo* info = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  if ((s = js_GetStreamInfo(&info, c->js, options.stream.c_str(), &jo, &code)) != NATS_OK) {
    return platform::Status::error(failure("stream " + options.stream, s, code), platform::Errc::kUnavailable);
  }
  c->subject = info->Config->SubjectsLen > 0 ? info->Config->Subjects[0] : ">";
  c->messages = info->State.Msgs;
  jsStreamInfo_Destroy(info);

  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = options.stream.c_str();
  so.Config.AckPolicy = js_AckExplicit;
  so.Config.DeliverPolicy = js_DeliverAll;
  if ((s = js_PullSubscribe(&c->sub, c->js, c->subject.c_str(),
                            options.durable.empty() ? nullptr : options.durable.c_str(), &jo, &so, &code)) !=
      NATS_OK) {
    return platform::Status::error(failure("pull consumer on " + options.stream, s, code), platform::Errc::kUnavailable);
  }
  return std::unique_ptr<JetStreamConsumer>(new JetStreamConsumer(std::move(c)));
}

JetStreamConsumer::Fetched JetStreamConsumer::fetch(
    const std::function<void(const ConsumedMessage&)>& on_message, std::string& error) {
  return fetch_group(
      [&](std::span<const ConsumedMessage> group) {
        for (const ConsumedMessage& m : group) on_message(m);
        return true;
      },
      error);
}

JetStreamConsumer::Fetched JetStreamConsumer::fetch_group(
    const std::function<bool(std::span<const ConsumedMessage>)>& on_group, std::string& error) {
  State& c = *state_;
  natsMsgList list{};
  jsErrCode code = static_cast<jsErrCode>(0);
  const natsStatus s = natsSubscription_Fetch(&list, c.sub, 256, c.timeout_ms, &code);
  if (s == NATS_TIMEOUT) return Fetched::kTimeout;
  if (s != NATS_OK) {
    natsMsgList_Destroy(&list);
    error = failure("fetch", s, code);
    return Fetched::kError;
  }
  const auto count = static_cast<std::size_t>(std::max(list.Count, 0));
  std::vector<ConsumedMessage> group(count);
  if (c.aligned.size() < count) c.aligned.resize(count);
  for (std::size_t i = 0; i < count; ++i) {
    natsMsg* m = list.Msgs[i];
    // NATS hands over the payload at whatever offset follows its headers, and FlatBuffers reads
    // scalars in place: 32-bit ARM faults on a misaligned 64-bit load (SIGBUS). Verify and read
    // an 8-byte-aligned copy.
    const std::size_t length = static_cast<std::size_t>(std::max(natsMsg_GetDataLength(m), 0));
    c.aligned[i].assign((length + 7) / 8, 0);
    if (length > 0) std::memcpy(c.aligned[i].data(), natsMsg_GetData(m), length);
    ConsumedMessage& msg = group[i];
    msg.frame = {reinterpret_cast<const std::uint8_t*>(c.aligned[i].data()), length};
    jsMsgMetaData* meta = nullptr;
    if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
      msg.stream_seq = meta->Sequence.Stream;
      msg.published_ns = meta->Timestamp;
      if (meta->NumPending == 0) c.caught_up = true;
      jsMsgMetaData_Destroy(meta);
    }
    msg.agent = header(m, kHeaderAgent);
    msg.region = header(m, kHeaderRegion);
    msg.pop = header(m, kHeaderPop);
    msg.seq = header(m, kHeaderSeq);
    msg.incarnation = header(m, kHeaderIncarnation);
    msg.msg_id = header(m, kHeaderMsgId);
  }
  if (on_group(group)) {
    for (std::size_t i = 0; i < count; ++i) natsMsg_Ack(list.Msgs[i], nullptr);
  }
  natsMsgList_Destroy(&list);
  return Fetched::kMessages;
}

}  // namespace vantage::collector::store
