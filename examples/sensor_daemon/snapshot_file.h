// Snapshot files: the daemon's learned state on disk, written atomically and read back
// only when every byte checks out.
//
// FILE LAYOUT (format version 2, proto/ntk/v1/snapshot.proto)
//   varint(n) SnapshotHeader       magic 0x534b544e (the bytes "NTKS"), format_version 2
//   varint(n) KeySnapshot          one per key, strictly sorted by key
//   varint(n) SnapshotTrailer      key_count, crc32c
//   The trailer is the last frame of the file. Its crc32c is the CRC-32C (crc32c.h) of
//   every byte before the trailer's own length prefix, and key_count the number of
//   KeySnapshot frames. Frames are protobuf's length-delimited form, as on the wire.
//
// READING: all or nothing. decode_snapshot() checks, in this order, the framing (no
//   frame runs past the end: a truncated file), the header's magic and format version,
//   the checksum, then parses every key record and checks the count and the order; only
//   a file that passes everything is returned. Otherwise SnapshotError says what is
//   wrong (e.g. "checksum mismatch: stored 0x1a2b3c4d, computed 0x5e6f7081"), and the
//   caller falls back to an older snapshot (SnapshotStore::load_latest).
//
// WRITING: write_file_atomically() = write a temp file in the same directory, fsync it,
//   rename it over the final name, fsync the directory. A crash at any point leaves
//   either the old set of files or the new one, never a torn file under a final name.
//
// SnapshotStore manages a snapshot directory: files snapshot-<generation>.ntks (20-digit
//   zero-padded generation, increasing), an advisory lock (flock on <dir>/LOCK) so that
//   two daemons never share a directory, and pruning to the newest `keep` files.
//
// REFUSED FILES are never deleted by the store. load_latest() renames a file it refuses
//   (corrupt, or a state the caller cannot import, e.g. more keys than max_keys) to
//   snapshot-<generation>.ntks.refused: out of the pruning and of the `keep` count. At
//   every later start the files set aside are tried first, newest first, so a snapshot
//   refused because of the configuration comes back once the configuration allows it; it
//   is then renamed to the next generation (the newest), and the snapshots written in
//   between become older generations that pruning removes in time. A file that is refused
//   again stays aside; deleting it is the operator's decision.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "ntk/v1/snapshot.pb.h"

namespace ntk::daemon {

inline constexpr std::uint32_t kSnapshotMagic = 0x534b544eu;  // "NTKS" little-endian
// Version 2: a model's sigma may have pending rank-1 updates (ModelState::sigma_pending),
// which a version-1 reader would ignore, so it must refuse these files. Version 1 files
// (no pending updates) are still read.
inline constexpr std::uint32_t kSnapshotFormatVersion = 2;
inline constexpr std::uint32_t kOldestSnapshotFormatVersion = 1;

// A snapshot that cannot be written or used; what() is the reason (with the file name
// when a file is involved).
class SnapshotError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SnapshotContents {
  v1::SnapshotHeader header;
  std::vector<v1::KeySnapshot> keys;  // strictly sorted by key
};

// The bytes of a snapshot file. header.magic and header.format_version are set by the
// encoder (whatever the caller put there).
// requires: keys strictly sorted by key, no key empty (std::invalid_argument otherwise).
std::string encode_snapshot(const v1::SnapshotHeader& header,
                            std::span<const v1::KeySnapshot> keys);

// Verifies and parses a whole snapshot file (see READING above).
// ensures: returns the complete contents, or throws SnapshotError and nothing is returned.
SnapshotContents decode_snapshot(std::string_view bytes);

// Reads and decodes a file; SnapshotError messages start with the path.
SnapshotContents read_snapshot_file(const std::filesystem::path& path);

// Writes bytes to path atomically and durably (see WRITING above). The temp file is
// path + ".tmp". Throws SnapshotError naming the failed step and errno's text; then the
// temp file is removed and whatever was at path is untouched.
void write_file_atomically(const std::filesystem::path& path, std::string_view bytes);

// SnapshotStore
//
// WHAT THIS OBJECT REPRESENTS
//   One snapshot directory owned by this process: the snapshot files in it, newest
//   generation first, and the lock that keeps other processes out.
// INITIAL VALUE: the directory exists (created with its parents if needed), is locked,
//   and leftover temp files of interrupted writes (never renamed, so never valid) are gone.
// THREAD SAFETY: write() and load_latest() may be called from any thread; writes are
//   serialized.
class SnapshotStore {
 public:
  static constexpr int kDefaultKeep = 3;

  // requires: keep >= 1 (std::invalid_argument). Throws SnapshotError if the directory
  // cannot be created or opened, or another process holds its lock.
  explicit SnapshotStore(std::filesystem::path dir, int keep = kDefaultKeep);
  ~SnapshotStore();
  SnapshotStore(const SnapshotStore&) = delete;
  SnapshotStore& operator=(const SnapshotStore&) = delete;

  struct Refusal {
    std::filesystem::path path;  // the file as it was tried
    std::string reason;
    // Where the file is now: path + ".refused", or path itself if it was already set
    // aside or could not be renamed (then it is still never pruned by this store).
    std::filesystem::path kept_as;
  };
  struct Loaded {
    std::filesystem::path path;  // where the file is now
    SnapshotContents contents;
    // Set when the snapshot is one refused at an earlier start: the file it was read
    // from, renamed to `path`, the next generation (unless that rename failed: then
    // path == *set_aside_as and it is tried first again at the next start).
    std::optional<std::filesystem::path> set_aside_as;
  };
  struct LoadResult {
    std::optional<Loaded> snapshot;  // the first good one; nullopt: none usable
    std::vector<Refusal> refused;    // files tried before it that failed, in that order
  };

  // Tries the files set aside by earlier calls (see REFUSED FILES), then the snapshot
  // files, newest first each, and returns the first that decodes and that `accept` (if
  // given) does not refuse by throwing std::exception (e.g. a state that does not import).
  // The ones tried before it are reported and kept on disk, set aside (see Refusal).
  LoadResult load_latest(const std::function<void(const SnapshotContents&)>& accept = nullptr);

  // Writes a new snapshot with the next generation, then removes all but the newest
  // `keep` snapshot files (never a file refused by load_latest). Returns the new path.
  // Throws SnapshotError (the directory is as before, apart from pruning not done).
  std::filesystem::path write(const v1::SnapshotHeader& header,
                              std::span<const v1::KeySnapshot> keys);

  // Snapshot files present, newest first (not the ones set aside).
  std::vector<std::filesystem::path> files() const;
  // Files set aside by load_latest (snapshot-<generation>.ntks.refused), newest first.
  std::vector<std::filesystem::path> refused_files() const;
  const std::filesystem::path& dir() const { return dir_; }

  // "snapshot-<20 digits>.ntks"; nullopt for names of any other form.
  static std::string file_name(std::uint64_t generation);
  static std::optional<std::uint64_t> parse_generation(std::string_view file_name);
  static constexpr std::string_view kRefusedSuffix = ".refused";

 private:
  using Found = std::vector<std::pair<std::uint64_t, std::filesystem::path>>;
  // Snapshot files (set_aside false) or files set aside (true), newest first.
  Found scan(bool set_aside) const;

  std::filesystem::path dir_;
  int keep_;
  int lock_fd_ = -1;
  mutable std::mutex mutex_;  // serializes write(), load_latest() and pruning
  std::uint64_t next_generation_ = 1;
  // Generations refused by load_latest that are still under their snapshot-*.ntks name
  // (the rename aside failed): write() never prunes them.
  std::vector<std::uint64_t> pinned_;
};

}  // namespace ntk::daemon
