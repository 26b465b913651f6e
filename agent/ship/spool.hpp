// The agent's disk spool: every Batch frame is appended here before it is sent and stays until
// the collector acks its seq, so delivery is at-least-once across reconnects, restarts and crashes.
// Bounded by size (the oldest records are dropped and counted), and it recovers from torn writes.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "agent/ship/spool_files.hpp"
#include "platform/result.hpp"

namespace vantage::agent::ship {

// On-disk format (all integers little-endian; spool.cpp holds the constants):
//
//   <dir>/seg-<seq of its first record, 20 decimal digits>.vsp
//     records back to back, each a 20-byte header then the payload:
//       u32 magic "VSR1"  u32 payload length  u64 seq  u32 CRC32C(header bytes 0..15 ++ payload)
//     Seqs inside one segment are consecutive, and the first one is the seq in the file name.
//   <dir>/state    (replaced atomically: state.tmp, fsync, rename, fsync of the directory)
//       u32 magic "VSST"  u32 version (1)  u64 next_seq  u64 acked_seq  u64 dropped_through
//       u64 dropped_total  u32 CRC32C(all preceding bytes)                  = 44 bytes
//   <dir>/incarnation    (written once, atomically like the state file, through incarnation.tmp)
//       u32 magic "VSIN"  u32 version (1)  16 random bytes  u32 CRC32C(all preceding bytes) = 28 bytes
//
// The incarnation names this spool's seq space: the collector identifies a batch by (agent,
// incarnation, seq), so seqs that start again at 1 (a purged or re-imaged spool) are new batches,
// never duplicates. It lives in its own file because the state file is rewritten on every ack and
// drop, and one written once cannot be lost to a failed rewrite. open() makes a new one (getrandom,
// 128 bits, so it never collides with an earlier one) whenever it cannot prove that next_seq
// continues the seq space it names: the directory is new, the incarnation file is missing or
// corrupt (also a spool of the version before incarnations), the state file is missing or
// corrupt (next_seq is then rebuilt from the segments and may go back), or damage cut records off
// the end of the spool whose seqs could reach the state's next_seq (which lags the appends: it is
// saved on acks and drops), so that next_seq may go back under a valid state. The new incarnation is
// durable before the state file is rewritten, so no crash can pair an old incarnation with a
// next_seq that went back. Records still spooled then go out under the new incarnation: a batch
// the collector held but whose ack was not persisted may be stored twice, never lost.
//
//   <dir>/reserve    (reserve_bytes of zeros, when reserve_bytes > 0)
//       Space held back for the state file: on a full disk it is deleted so that drops and acks
//       can still be saved (and dropped segments deleted), and it is made again once there is room.
//       With the reserve used up, the state file is rewritten in place (no new space; a torn write
//       fails the CRC and reads as a corrupt state, which loses nothing).
//
// A record is live when its seq is above both acked_seq and dropped_through. Sizes count whole
// records (header + payload) as they sit on disk.
inline constexpr std::uint32_t kSpoolRecordHeaderBytes = 20;

// The spool's incarnation id: 128 random bits, fixed for the life of the spool directory.
using SpoolIncarnation = std::array<std::uint8_t, 16>;

// 32 lowercase hex digits, byte 0 first (as on disk).
[[nodiscard]] std::string to_hex(const SpoolIncarnation& incarnation);

struct SpoolConfig {
  std::filesystem::path dir;  // created (with parents) if missing
  // Bound on live bytes. An append that would exceed it first drops the oldest live records.
  // Segment files stay below max_bytes + segment_bytes + max_record_bytes on disk (a segment file
  // is deleted only once every record in it is acked or dropped, and the state is saved); the
  // reserve, state and incarnation files come on top.
  std::uint64_t max_bytes = 64ull << 20;
  std::uint64_t segment_bytes = 4ull << 20;   // a new segment starts once this is reached
  std::uint32_t max_record_bytes = 4u << 20;  // payload limit, checked before any allocation
  enum class Fsync {
    // append() returns after fdatasync: the record survives power loss. (An fdatasync that
    // outlasts sync_wait leaves the record written but not durable until a later sync.)
    kEveryRecord,
    kInterval,     // fdatasync at most fsync_interval apart (on append) and on flush()
  };
  Fsync fsync = Fsync::kInterval;
  std::chrono::milliseconds fsync_interval{1000};
  // How long a spool call waits for an fsync (which runs on the spool's sync worker). One that
  // takes longer goes on in the background; the call reports it as pending (Errc::kUnavailable)
  // and the records it covers are not durable (not sent) until it returns: the next call that
  // syncs collects its result and applies it (records durable, a state file renamed into place),
  // so a disk whose every fsync outlasts sync_wait still makes progress, a step per call. Keeps a
  // hung disk from blocking the spool's owner thread, whose health feeds the watchdog. open()
  // waits without this bound only for a new incarnation file (and the state after it).
  std::chrono::milliseconds sync_wait{500};
  std::uint64_t reserve_bytes = 64u << 10;  // the reserve file (0: none)
  // Every file operation goes through this; nullptr: the real file system. Tests inject faults.
  std::shared_ptr<SpoolFiles> files;
};

struct SpoolRecord {
  std::uint64_t seq = 0;
  std::vector<std::byte> payload;
};

struct SpoolStats {
  std::uint64_t records = 0;     // live records
  std::uint64_t live_bytes = 0;  // on-disk size of the live records; never above max_bytes
  std::uint64_t disk_bytes = 0;  // size of all segment files (live, acked and dropped records)
  std::uint64_t segments = 0;
  std::uint64_t oldest_seq = 0;  // oldest and newest live seq; 0 when there is none
  std::uint64_t newest_seq = 0;
  std::uint64_t next_seq = 0;
  std::uint64_t acked_seq = 0;
  std::uint64_t dropped_total = 0;  // records dropped to stay within max_bytes (persisted)
  std::uint64_t fsyncs = 0;         // fdatasync/fsync calls on segments, this process
  std::uint64_t truncations = 0;    // segments cut at damage during open()
  std::uint64_t truncated_bytes = 0;
  // Records lost to damage this open() cut or removed (counted by the open that finds it, so a
  // later open does not count it again): the unacked seqs missing between the records kept, and
  // after a cut at the end, the ones the state file says were appended.
  std::uint64_t lost_records = 0;
  std::uint64_t corrupt_reads = 0;  // records next_unacked() gave up on (failed validation, or unreadable)
  // This process: appends that failed, so their record was never stored (the disk stayed full after
  // dropping every older record, an I/O error, a record too large).
  std::uint64_t append_failures = 0;
  // This process: failed file operations that the spool absorbed and retries itself (a read of a
  // record, an opportunistic sync, saving the state inside another call); no call returned them.
  std::uint64_t retried_errors = 0;
  std::uint64_t full_disk_drops = 0;  // records dropped (in dropped_total) to make room on a full disk
  std::uint64_t sync_stalls = 0;      // fsyncs that outlasted sync_wait
  std::uint64_t sync_stalled_ms = 0;  // how long the current stalled fsync has run; 0 when none
  // This process: records whose segment's fdatasync failed (the kernel may have dropped their
  // write-back, and a later sync that returns 0 does not prove otherwise): never sent.
  std::uint64_t sync_lost = 0;
  bool state_unsaved = false;         // the state file is behind (its write failed; retried)
  // Records this process could not keep: lost to I/O errors or damage after being handed over.
  [[nodiscard]] std::uint64_t lost() const { return append_failures + corrupt_reads + sync_lost + lost_records; }
};

// The state file's contents (see the on-disk format above).
struct SpoolStateFile {
  std::uint64_t next_seq = 1;
  std::uint64_t acked_seq = 0;
  std::uint64_t dropped_through = 0;
  std::uint64_t dropped_total = 0;
  bool operator==(const SpoolStateFile&) const = default;
};

// Records a spool gave up as unreadable (counted in corrupt_reads), with the seq space they are in.
struct SpoolBadSeqs {
  SpoolIncarnation incarnation{};
  std::vector<std::uint64_t> seqs;
};

class SpoolSyncer;

// Owns one file descriptor; closes it on destruction.
class SpoolFd {
 public:
  SpoolFd() = default;
  explicit SpoolFd(int fd) : fd_(fd) {}
  SpoolFd(SpoolFd&& other) noexcept : fd_(other.release()) {}
  SpoolFd& operator=(SpoolFd&& other) noexcept;
  SpoolFd(const SpoolFd&) = delete;
  SpoolFd& operator=(const SpoolFd&) = delete;
  ~SpoolFd() { reset(); }
  [[nodiscard]] int get() const { return fd_; }
  [[nodiscard]] bool valid() const { return fd_ >= 0; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Failures and full disks: an append that finds the disk full (ENOSPC, EDQUOT) drops the oldest
// segment's live records (counted in dropped_total and full_disk_drops), saves the state (with the
// reserve file, or in place), deletes what is dead and tries again, until it fits or nothing older
// is left; only then does it fail (append_failures). Dropping happens only when the drop can be
// saved: unsaved, it would free nothing. A state file that cannot be saved never wedges anything: acked_seq and the
// drops stay in memory, segments stay on disk until a later ack(), append() or flush() saves it.
// A record that cannot be read (I/O error) is tried again on later calls, a few times, before it
// is given up (corrupt_reads). fsyncs run on a worker thread, waited for at most sync_wait (a
// longer one is applied when a later call finds it returned). A failed fdatasync is final for the
// records it covered (sync_lost): the kernel may have dropped their write-back, so the next sync
// returning 0 proves nothing about them.
//
// Durability: append() hands the record to the kernel with one pwritev(2) (no user-space
// buffer) before it returns. A crash of this process (even SIGKILL) after append() returned
// cannot lose that record: it is in the page cache. Power loss or a kernel crash keeps only what
// was fdatasync'd: with Fsync::kEveryRecord every appended record; with kInterval everything up to
// the last sync (at most fsync_interval old while appends continue, and everything at flush()).
// A write torn by either kind of crash is cut off by the next open(). durable_seq() tells which
// records are past the power-loss risk.
//
// Not thread-safe: one owner (the shipper) calls everything (the sync worker is internal). Memory is O(records) at 4 bytes each
// plus one payload while reading; payloads are never cached.
//
// Failures are a platform::Status whose message names the file at fault. Its code: kIo when the
// file system said no (cannot create, read, write or sync a file), kExhausted for a full disk or
// quota, the file size limit, no descriptors left or the seq space used up, kInvalid for a bad
// SpoolConfig or an append() the contract refuses (wrong seq, record too large).
class Spool {
 public:
  // Scans and validates every segment; damage (torn tail, bad CRC, garbage, empty or stray
  // segments, a missing or corrupt state file) is cut off or ignored with a warning, never an
  // error. Errors are for the file system only (cannot create, read, write, or sync a file), and
  // a bad config. Each recovered problem appends one line to warnings (file, offset, what was
  // kept), also when open then fails: the caller reports them either way.
  [[nodiscard]] static platform::Result<Spool> open(const SpoolConfig& config,
                                                    std::vector<std::string>& warnings);

  Spool(Spool&& other) noexcept;
  Spool& operator=(Spool&& other) noexcept;
  Spool(const Spool&) = delete;
  Spool& operator=(const Spool&) = delete;
  ~Spool();

  // The seq the next append() must carry. Strictly increasing across restarts, also after every
  // record was acked and its segment deleted. Starts at 1; 0 means "nothing" everywhere.
  [[nodiscard]] std::uint64_t next_seq() const { return next_seq_; }

  // Stores one record. seq must equal next_seq(); the payload must fit max_record_bytes and, with
  // its header, max_bytes. When the live records would exceed max_bytes, the oldest are dropped
  // first (dropped_total, persisted before the record is written). On error the record is not in
  // the spool and next_seq() is unchanged (drops done for it stay done).
  [[nodiscard]] platform::Status append(std::uint64_t seq, std::span<const std::byte> payload);

  // The collector holds everything <= seq. Persists acked_seq, then deletes segment files whose
  // records are all acked or dropped. Acks at or below acked_seq only retry an unsaved state; an
  // ack beyond the newest appended seq is clamped to it. On error acked_seq has still moved (the
  // records are not resent), and the state is saved by a later call.
  [[nodiscard]] platform::Status ack(std::uint64_t seq);

  // The first live record with seq > after_seq, read from disk and validated again (CRC, length,
  // seq); a record that fails is skipped, counted in corrupt_reads and treated as gone. An I/O
  // error ends the call with nothing (retried_errors); the next call tries that record again, and
  // gives it up after a few failures.
  // The shipper resends with after_seq = acked_seq() after a reconnect, then the returned seqs.
  [[nodiscard]] std::optional<SpoolRecord> next_unacked(std::uint64_t after_seq);

  // fdatasync of the segments written since the last sync (and of the directory if segments were
  // created), for Fsync::kInterval timers and shutdown; also saves an unsaved state and retries
  // failed deletions. No-op when nothing is pending. Errc::kUnavailable: an fsync is still running.
  [[nodiscard]] platform::Status flush();

  // Every record with seq <= durable_seq() has been fdatasync'd (open() syncs what it finds).
  // With Fsync::kInterval, send only up to here: a record sent before its sync and then lost
  // to power loss gives its seq back to the next append, and the collector, which dedupes on
  // (agent, seq), would discard that different batch as a duplicate.
  [[nodiscard]] std::uint64_t durable_seq() const { return durable_seq_; }
  [[nodiscard]] std::uint64_t acked_seq() const { return acked_seq_; }
  // Names this spool's seq space (see the on-disk format above); never all zero.
  [[nodiscard]] const SpoolIncarnation& incarnation() const { return incarnation_; }
  [[nodiscard]] SpoolStats stats() const;
  // The records next_unacked() gave up as unreadable and that are still above the floor.
  [[nodiscard]] SpoolBadSeqs bad_seqs() const { return {incarnation_, bad_seqs_}; }
  // Records an earlier Spool of this directory in this process gave up (and counted): skipped
  // here too, and not counted again (also when this open cut them as damage). Ignored unless
  // bad.incarnation is the one this open found on disk.
  void adopt_bad_seqs(const SpoolBadSeqs& bad);
  [[nodiscard]] const SpoolConfig& config() const { return config_; }

 private:
  struct Segment {
    std::uint64_t first_seq = 0;
    std::uint64_t size = 0;              // bytes of valid records
    std::vector<std::uint32_t> offsets;  // record i (seq first_seq + i) starts at offsets[i]
    std::uint64_t last_seq() const { return first_seq + offsets.size() - 1; }
    std::uint64_t record_end(std::size_t i) const { return i + 1 < offsets.size() ? offsets[i + 1] : size; }
  };

  struct UnsyncedSegment {
    std::uint64_t first_seq = 0;
    std::uint64_t from = 0;  // its oldest record not known to be synced
    SpoolFd fd;
  };

  // What a sync covers, so that one which outlasts sync_wait is applied when it returns (on a
  // later call) instead of being thrown away: a slow disk still makes progress, and an error is
  // never hidden by a later sync that returns 0.
  struct SyncJob {
    enum class Kind : std::uint8_t { kSegment, kDir, kStateTmp, kIncarnationTmp, kStateInPlace };
    Kind kind = Kind::kSegment;
    std::uint64_t first_seq = 0;  // kSegment: the segment
    std::uint64_t through = 0;    // kSegment: its newest record when the sync started
    std::uint64_t dir_gen = 0;    // kDir: the directory changes it covers
    bool carries_state = false;   // kDir: it makes this renamed state durable
    SpoolStateFile state{};       // kStateTmp, kStateInPlace, kDir with carries_state
  };

  explicit Spool(SpoolConfig config);
  std::uint64_t floor() const { return acked_seq_ > dropped_through_ ? acked_seq_ : dropped_through_; }
  std::filesystem::path segment_path(std::uint64_t first_seq) const;
  bool is_bad(std::uint64_t seq) const;
  std::optional<std::uint64_t> first_live_after(std::uint64_t after) const;
  std::optional<std::uint64_t> last_live() const;
  std::uint64_t record_bytes(std::uint64_t seq) const;  // 0 when not in the index
  void retire_through(std::uint64_t seq);               // before raising the floor: live counters follow
  std::uint64_t drop_oldest_for(std::uint64_t bytes);   // returns how many were dropped
  void delete_dead_segments();
  bool drop_oldest_segment();                          // for a full disk; false when nothing is live
  enum class ReadOutcome { kOk, kInvalid, kIoError };
  ReadOutcome read_record(std::uint64_t seq, SpoolRecord& out);
  platform::Status write_record(std::uint64_t seq, std::span<const std::byte> payload, int& err);
  platform::Status persist_state();  // write_state(), then delete what is dead; remembers a failure
  platform::Status write_state();
  // 0, SpoolSyncer::kPending, or kSyncFailed (settled_error_ says what). Collects (and applies) an
  // earlier sync that outlasted its wait first; while that one still runs, nothing new starts.
  int sync_fd(int fd, bool data_only, const SyncJob& job);
  int settle_sync();  // the first half of sync_fd: 0, kPending or kSyncFailed
  platform::Status apply_sync(const SyncJob& job, int result);
  void segment_synced(std::uint64_t first_seq, std::uint64_t through);
  std::uint64_t segment_sync_failed(std::uint64_t first_seq);  // the records it loses
  void recompute_durable();
  std::chrono::milliseconds sync_wait() const;
  std::uint64_t saved_floor() const;
  SpoolStateFile current_state() const { return {next_seq_, acked_seq_, dropped_through_, dropped_total_}; }
  platform::Status sync_error(int result, const std::string& what, const std::filesystem::path& path) const;
  void ensure_reserve();
  bool release_reserve();
  // Writes tmp_name and syncs it; job's apply_sync renames it into place (also on a later call).
  platform::Status write_file_atomically(const char* tmp_name, std::span<const std::byte> bytes, const SyncJob& job);
  // distrust: why the seq space is not trusted although the state file read fine (empty: it is not).
  platform::Status load_or_create_incarnation(bool seq_space_trusted, const std::string& distrust,
                                              std::vector<std::string>& warnings);
  platform::Status sync_data();
  platform::Status sync_dir();
  int fsync_dir();  // sync_dir()'s work: 0 or the errno
  platform::Status start_segment(std::uint64_t first_seq, int& err);  // err: the errno
  platform::Status recover(std::vector<std::string>& warnings);

  SpoolConfig config_;
  std::shared_ptr<SpoolFiles> files_;
  std::unique_ptr<SpoolSyncer> syncer_;
  SpoolFd dir_fd_;
  SpoolFd write_fd_;  // the newest segment's, while appends may go there
  SpoolFd read_fd_;   // cached for sequential resends
  std::uint64_t read_seg_first_ = 0;
  std::vector<Segment> segments_;        // ascending first_seq, non-empty, seqs strictly increasing
  std::vector<std::uint64_t> bad_seqs_;  // failed validation on read; treated as not live
  std::vector<UnsyncedSegment> unsynced_closed_;  // closed or recovered segments awaiting their sync
  std::vector<std::uint64_t> unlink_pending_;     // dead segments whose deletion failed

  SpoolIncarnation incarnation_{};
  SpoolIncarnation found_incarnation_{};  // the one open() found on disk, if it read fine
  std::uint64_t next_seq_ = 1;
  std::uint64_t durable_seq_ = 0;
  std::uint64_t acked_seq_ = 0;
  std::uint64_t dropped_through_ = 0;
  std::uint64_t dropped_total_ = 0;
  std::uint64_t live_bytes_ = 0;
  std::uint64_t live_records_ = 0;

  std::uint64_t write_unsynced_from_ = 0;  // write_fd_'s oldest record not yet synced; 0: none
  bool write_poisoned_ = false;           // write_fd_'s sync failed: the next record starts a new segment
  std::uint64_t dir_gen_ = 0;             // directory changes (segments created, renames)
  std::uint64_t dir_unsynced_from_ = 0;   // first seq of the oldest segment created since the last dir fsync
  bool state_dirty_ = false;              // the state file on disk is behind the one in memory
  std::optional<SyncJob> pending_sync_;   // the sync that outlasted its wait, until applied
  platform::Status settled_error_;        // what kSyncFailed means
  bool unbounded_sync_ = false;           // open() making an incarnation durable: no watchdog yet
  std::optional<SpoolStateFile> saved_state_;    // known durable on disk
  std::optional<SpoolStateFile> state_renamed_;  // renamed into place, awaiting the directory fsync
  bool reserve_present_ = false;
  std::uint64_t read_fail_seq_ = 0;  // the record whose reads fail, and how often they did
  unsigned read_fail_count_ = 0;
  std::chrono::steady_clock::time_point last_sync_{};

  std::uint64_t fsyncs_ = 0;
  std::uint64_t truncations_ = 0;
  std::uint64_t truncated_bytes_ = 0;
  std::uint64_t lost_records_ = 0;
  std::uint64_t corrupt_reads_ = 0;
  std::uint64_t append_failures_ = 0;
  std::uint64_t retried_errors_ = 0;
  std::uint64_t full_disk_drops_ = 0;
  std::uint64_t sync_lost_ = 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> damage_lost_;  // seq ranges in lost_records_
};

}  // namespace vantage::agent::ship
