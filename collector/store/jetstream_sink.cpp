#include "collector/store/jetstream_sink.hpp"

#include <nats/nats.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include "platform/log.hpp"

namespace vantage::collector::store {

namespace {

using platform::log;
using platform::LogLevel;

std::string status_text(natsStatus s) {
  const char* last = nats_GetLastError(nullptr);
  std::string out = natsStatus_GetText(s);
  if (last != nullptr && *last != '\0' && out != last) out += std::string(" (") + last + ")";
  return out;
}

struct OptionsDeleter {
  void operator()(natsOptions* o) const noexcept { natsOptions_Destroy(o); }
};
struct MsgDeleter {
  void operator()(natsMsg* m) const noexcept { natsMsg_Destroy(m); }
};

}  // namespace

struct JetStreamSink::State {
  JetStreamOptions options;
  std::string servers_text;  // for log lines
  natsConnection* connection = nullptr;
  jsCtx* js = nullptr;
  bool stream_ready = false;         // store thread only
  std::atomic<bool> closing{false};  // the disconnect of our own close is not an outage

  // The group in flight: Nats-Msg-Id -> index into outcomes. Ack callbacks (NATS threads) fill
  // in outcomes; store() clears the map before it returns, so a late ack finds nothing.
  std::mutex mutex;
  std::unordered_map<std::string, std::size_t> in_flight;
  std::vector<StoreOutcome> outcomes;
  std::size_t answered = 0;
  std::string first_error;

  // Closes the connection. The client's own threads may still run a disconnected or closed
  // callback into this object afterwards, so it is never freed (see ~JetStreamSink).
  void shutdown() {
    if (js != nullptr) jsCtx_Destroy(js);
    js = nullptr;
    if (connection != nullptr) {
      closing = true;
      natsConnection_Close(connection);
      natsConnection_Destroy(connection);
      connection = nullptr;
    }
  }

  std::string api_error(const char* what, natsStatus s, jsErrCode code) const {
    std::string out = std::string("JetStream ") + what + " on " + servers_text + ": " + status_text(s);
    if (code != 0) out += " (JetStream error " + std::to_string(static_cast<int>(code)) + ")";
    return out;
  }

  // Looks the stream up and creates it when missing. A stream that exists with other settings
  // belongs to whoever made it (an operator may have set replicas or limits on purpose): use it.
  std::string ensure_stream() {
    jsOptions api;
    jsOptions_Init(&api);
    api.Wait = options.connect_timeout.count();
    jsStreamInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    natsStatus s = js_GetStreamInfo(&info, js, options.stream.c_str(), &api, &code);
    const std::string wanted_subject = options.subject_prefix + ".>";
    if (s == NATS_OK) {
      const jsStreamConfig* c = info->Config;
      bool covers = false;
      std::string subjects;
      for (int i = 0; i < c->SubjectsLen; ++i) {
        subjects += (i ? ", " : "") + std::string(c->Subjects[i]);
        covers = covers || wanted_subject == c->Subjects[i];
      }
      if (!covers || c->Storage != js_FileStorage ||
          c->Duplicates != std::chrono::nanoseconds(options.duplicate_window).count()) {
        log(LogLevel::kNotice,
            "JetStream: stream %s exists with other settings (subjects %s, %s storage, duplicate window "
            "%.0f s); using it as it is",
            options.stream.c_str(), subjects.c_str(), c->Storage == js_FileStorage ? "file" : "memory",
            static_cast<double>(c->Duplicates) / 1e9);
      }
      jsStreamInfo_Destroy(info);
      return {};
    }
    if (s != NATS_NOT_FOUND && code != JSStreamNotFoundErr) {
      return api_error("stream lookup", s, code);
    }
    jsStreamConfig config;
    jsStreamConfig_Init(&config);
    const char* subjects[] = {wanted_subject.c_str()};
    config.Name = options.stream.c_str();
    config.Subjects = subjects;
    config.SubjectsLen = 1;
    config.Storage = js_FileStorage;
    config.Duplicates = std::chrono::nanoseconds(options.duplicate_window).count();
    config.Replicas = options.replicas;
    code = static_cast<jsErrCode>(0);
    s = js_AddStream(&info, js, &config, &api, &code);
    if (s != NATS_OK) {
      return api_error("stream create", s, code);
    }
    jsStreamInfo_Destroy(info);
    log(LogLevel::kInfo,
        "JetStream: created stream %s (subjects %s, file storage, %d replica(s), duplicate window %lld s)",
        options.stream.c_str(), wanted_subject.c_str(), options.replicas,
        static_cast<long long>(
            std::chrono::duration_cast<std::chrono::seconds>(options.duplicate_window).count()));
    return {};
  }

  void on_ack(natsMsg* msg, jsPubAck* ack, jsPubAckErr* error) {
    const char* id = nullptr;
    if (natsMsgHeader_Get(msg, kHeaderMsgId, &id) == NATS_OK && id != nullptr) {
      std::lock_guard lock(mutex);
      if (auto it = in_flight.find(id); it != in_flight.end()) {
        if (ack != nullptr) {
          outcomes[it->second] = ack->Duplicate ? StoreOutcome::kDuplicate : StoreOutcome::kStored;
        } else {
          outcomes[it->second] = StoreOutcome::kFailed;
          if (first_error.empty() && error != nullptr) {
            first_error = std::string(id) + ": " + natsStatus_GetText(error->Err) +
                          (error->ErrText != nullptr ? std::string(" ") + error->ErrText : std::string());
          }
        }
        ++answered;
        in_flight.erase(it);
      }
    }
    natsMsg_Destroy(msg);
  }
};

namespace {

void ack_handler(jsCtx*, natsMsg* msg, jsPubAck* ack, jsPubAckErr* error, void* closure) {
  static_cast<JetStreamSink::State*>(closure)->on_ack(msg, ack, error);
}

std::string connected_url(natsConnection* nc) {
  char url[256] = {};
  if (natsConnection_GetConnectedUrl(nc, url, sizeof url) != NATS_OK || url[0] == '\0') return "?";
  return url;
}

void on_connected(natsConnection* nc, void*) {
  log(LogLevel::kNotice, "JetStream: connected to %s", connected_url(nc).c_str());
}
void on_disconnected(natsConnection*, void* closure) {
  if (static_cast<JetStreamSink::State*>(closure)->closing) return;
  log(LogLevel::kWarning,
      "JetStream: disconnected from NATS (%s); batches fail until it is back, reconnecting",
      static_cast<JetStreamSink::State*>(closure)->servers_text.c_str());
}
void on_reconnected(natsConnection* nc, void*) {
  log(LogLevel::kNotice, "JetStream: reconnected to %s", connected_url(nc).c_str());
}
void on_closed(natsConnection*, void* closure) {
  if (static_cast<JetStreamSink::State*>(closure)->closing) return;
  log(LogLevel::kWarning, "JetStream: NATS connection closed");
}

}  // namespace

std::string message_id(std::string_view agent, const Incarnation& incarnation, std::uint64_t seq) {
  std::string id(agent);
  id += '/';
  if (incarnation != kLegacyIncarnation) {
    id += incarnation_hex(incarnation);
    id += '-';
  }
  id += std::to_string(seq);
  return id;
}

JetStreamSink::JetStreamSink(std::unique_ptr<State> state) : state_(std::move(state)) {}
JetStreamSink::~JetStreamSink() {
  if (!state_) return;
  state_->shutdown();
  // The NATS client calls the connection's callbacks from its own threads, and may still do so
  // after natsConnection_Destroy() returns: the callbacks' closure stays allocated (and
  // reachable) for the life of the process. A collector makes one sink; tests make a few.
  static std::mutex retired_mutex;
  // Never destroyed, not even at exit, when the client's threads may still be running.
  static auto* const retired = new std::vector<std::unique_ptr<State>>();
  const std::lock_guard lock(retired_mutex);
  retired->push_back(std::move(state_));
}

std::string JetStreamSink::subject(std::string_view region) const {
  return state_->options.subject_prefix + "." + std::string(region);
}

Result<std::unique_ptr<JetStreamSink>> JetStreamSink::connect(const JetStreamOptions& options) {
  if (options.servers.empty()) {
    return platform::Status::error("JetStream: no NATS server URL", platform::Errc::kInvalid);
  }
  auto state = std::make_unique<State>();
  state->options = options;
  for (const std::string& s : options.servers)
    state->servers_text += (state->servers_text.empty() ? "" : ",") + s;

  natsOptions* raw = nullptr;
  if (natsOptions_Create(&raw) != NATS_OK) {
    return platform::Status::error("JetStream: cannot allocate NATS options", platform::Errc::kUnavailable);
  }
  std::unique_ptr<natsOptions, OptionsDeleter> opts(raw);
  std::vector<const char*> urls;
  for (const std::string& s : options.servers) urls.push_back(s.c_str());
  State* closure = state.get();
  natsStatus s = natsOptions_SetServers(opts.get(), urls.data(), static_cast<int>(urls.size()));
  // Reconnect forever (a collector outlives NATS restarts) but bounded per attempt; a server that
  // is down at start is retried in the background like a lost one.
  if (s == NATS_OK) s = natsOptions_SetName(opts.get(), options.client_name.c_str());
  if (s == NATS_OK) s = natsOptions_SetTimeout(opts.get(), options.connect_timeout.count());
  if (s == NATS_OK) s = natsOptions_SetAllowReconnect(opts.get(), true);
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts.get(), -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts.get(), options.reconnect_wait.count());
  if (s == NATS_OK) s = natsOptions_SetReconnectJitter(opts.get(), 100, 1000);
  // A server that stops answering without closing the socket is noticed within ~6 s.
  if (s == NATS_OK) s = natsOptions_SetPingInterval(opts.get(), 2000);
  if (s == NATS_OK) s = natsOptions_SetMaxPingsOut(opts.get(), 3);
  if (s == NATS_OK) s = natsOptions_SetRetryOnFailedConnect(opts.get(), true, on_connected, closure);
  if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(opts.get(), on_disconnected, closure);
  if (s == NATS_OK) s = natsOptions_SetReconnectedCB(opts.get(), on_reconnected, closure);
  if (s == NATS_OK) s = natsOptions_SetClosedCB(opts.get(), on_closed, closure);
  if (s != NATS_OK) {
    return platform::Status::error("JetStream: NATS options for " + state->servers_text + ": " + status_text(s), platform::Errc::kUnavailable);
  }
  s = natsConnection_Connect(&state->connection, opts.get());
  if (s == NATS_NOT_YET_CONNECTED) {
    log(LogLevel::kWarning, "JetStream: no NATS server reachable yet (%s); retrying in the background",
        state->servers_text.c_str());
  } else if (s != NATS_OK) {
    return platform::Status::error("JetStream: connect to " + state->servers_text + ": " + status_text(s), platform::Errc::kUnavailable);
  } else {
    log(LogLevel::kNotice, "JetStream: connected to %s", connected_url(state->connection).c_str());
  }
  jsOptions js_options;
  jsOptions_Init(&js_options);
  js_options.Wait = options.connect_timeout.count();
  js_options.PublishAsync.AckHandler = ack_handler;
  js_options.PublishAsync.AckHandlerClosure = closure;
  s = natsConnection_JetStream(&state->js, state->connection, &js_options);
  if (s != NATS_OK) {
    return platform::Status::error("JetStream: context: " + status_text(s), platform::Errc::kUnavailable);
  }
  if (natsConnection_Status(state->connection) == NATS_CONN_STATUS_CONNECTED) {
    // A failure here is retried by the first store(); it is logged, not fatal.
    if (std::string error = state->ensure_stream(); error.empty()) {
      state->stream_ready = true;
    } else {
      log(LogLevel::kWarning, "%s", error.c_str());
    }
  }
  return std::unique_ptr<JetStreamSink>(new JetStreamSink(std::move(state)));
}

Result<std::vector<StoreOutcome>> JetStreamSink::store(std::span<const IncomingBatch> batches) {
  State& st = *state_;
  if (natsConnection_Status(st.connection) != NATS_CONN_STATUS_CONNECTED) {
    return platform::Status::error("JetStream: not connected to NATS (" + st.servers_text + ")", platform::Errc::kUnavailable);
  }
  if (!st.stream_ready) {
    if (std::string error = st.ensure_stream(); !error.empty()) {
      return platform::Status::error(error, platform::Errc::kUnavailable);
    }
    st.stream_ready = true;
  }
  {
    std::lock_guard lock(st.mutex);
    st.in_flight.clear();
    st.outcomes.assign(batches.size(), StoreOutcome::kFailed);
    st.answered = 0;
    st.first_error.clear();
  }
  std::size_t sent = 0;
  std::string publish_error;
  for (std::size_t i = 0; i < batches.size(); ++i) {
    const IncomingBatch& in = batches[i];
    const std::string agent(in.agent_id);
    const std::string region(in.filed_region());
    const std::string pop(in.filed_pop());
    const std::string seq = std::to_string(in.batch->seq());
    const std::string incarnation = incarnation_hex(in.incarnation);
    const std::string id = message_id(agent, in.incarnation, in.batch->seq());
    const std::string subj = subject(region);
    natsMsg* raw = nullptr;
    natsStatus s = natsMsg_Create(&raw, subj.c_str(), nullptr, reinterpret_cast<const char*>(in.frame.data()),
                                  static_cast<int>(in.frame.size()));
    std::unique_ptr<natsMsg, MsgDeleter> msg(raw);
    if (s == NATS_OK) s = natsMsgHeader_Set(msg.get(), kHeaderAgent, agent.c_str());
    if (s == NATS_OK) s = natsMsgHeader_Set(msg.get(), kHeaderRegion, region.c_str());
    if (s == NATS_OK) s = natsMsgHeader_Set(msg.get(), kHeaderPop, pop.c_str());
    if (s == NATS_OK) s = natsMsgHeader_Set(msg.get(), kHeaderSeq, seq.c_str());
    if (s == NATS_OK) s = natsMsgHeader_Set(msg.get(), kHeaderIncarnation, incarnation.c_str());
    if (s == NATS_OK) s = natsMsgHeader_Set(msg.get(), kHeaderMsgId, id.c_str());
    if (s == NATS_OK && in.frame.empty()) s = NATS_INVALID_ARG;
    if (s == NATS_OK) {
      // Registered before publishing: the ack can arrive before js_PublishMsgAsync returns.
      std::lock_guard lock(st.mutex);
      st.in_flight.emplace(id, i);
    }
    if (s == NATS_OK) {
      natsMsg* handed = msg.release();
      s = js_PublishMsgAsync(st.js, &handed, nullptr);
      msg.reset(handed);  // null when the library took it
    }
    if (s != NATS_OK) {
      std::lock_guard lock(st.mutex);
      st.in_flight.erase(id);
      if (publish_error.empty()) publish_error = id + ": " + status_text(s);
      continue;
    }
    ++sent;
  }
  if (sent > 0) {
    jsPubOptions wait;
    jsPubOptions_Init(&wait);
    wait.MaxWait = st.options.publish_timeout.count();
    const natsStatus s = js_PublishAsyncComplete(st.js, &wait);
    if (s != NATS_OK) {
      // Take back what was not acked: its late acks are dropped by the library, and the agents
      // resend those batches (a resend of one that did land is dropped by its Nats-Msg-Id within
      // the duplicate window, and by the store's batch key at any distance).
      natsMsgList pending{};
      if (js_PublishAsyncGetPendingList(&pending, st.js) == NATS_OK) natsMsgList_Destroy(&pending);
      if (publish_error.empty()) publish_error = "waiting for PubAcks: " + status_text(s);
    }
  }
  std::lock_guard lock(st.mutex);
  const std::size_t missing = st.in_flight.size();
  st.in_flight.clear();
  if (sent == 0) {
    return platform::Status::error("JetStream: nothing published to " + st.servers_text + ": " + publish_error, platform::Errc::kUnavailable);
  }
  if (missing > 0 || !publish_error.empty() || !st.first_error.empty()) {
    log(LogLevel::kWarning, "JetStream: %zu of %zu batches not acked (%zu without an answer): %s",
        static_cast<std::size_t>(std::count(st.outcomes.begin(), st.outcomes.end(), StoreOutcome::kFailed)),
        batches.size(), missing, (!st.first_error.empty() ? st.first_error : publish_error).c_str());
  }
  std::vector<StoreOutcome> outcomes = std::move(st.outcomes);
  st.outcomes = {};
  return outcomes;
}

}  // namespace vantage::collector::store
