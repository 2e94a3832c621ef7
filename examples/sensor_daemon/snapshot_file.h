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
    std::filesystem::path path;
    std::string reason;
  };
  struct Loaded {
    std::filesystem::path path;
    SnapshotContents contents;
  };
  struct LoadResult {
    std::optional<Loaded> snapshot;  // the newest good one; nullopt: none usable
    std::vector<Refusal> refused;    // newer files that failed, newest first
  };

  // Tries the snapshot files newest first and returns the first that decodes and that
  // `accept` (if given) does not refuse by throwing std::exception (e.g. a state that does
  // not import); the ones tried before it are reported (and left on disk for inspection).
  LoadResult load_latest(
      const std::function<void(const SnapshotContents&)>& accept = nullptr) const;

  // Writes a new snapshot with the next generation, then removes all but the newest
  // `keep` snapshot files. Returns the new file's path.
  // Throws SnapshotError (the directory is as before, apart from pruning not done).
  std::filesystem::path write(const v1::SnapshotHeader& header,
                              std::span<const v1::KeySnapshot> keys);

  // Snapshot files present, newest first.
  std::vector<std::filesystem::path> files() const;
  const std::filesystem::path& dir() const { return dir_; }

  // "snapshot-<20 digits>.ntks"; nullopt for names of any other form.
  static std::string file_name(std::uint64_t generation);
  static std::optional<std::uint64_t> parse_generation(std::string_view file_name);

 private:
  std::vector<std::pair<std::uint64_t, std::filesystem::path>> scan() const;

  std::filesystem::path dir_;
  int keep_;
  int lock_fd_ = -1;
  mutable std::mutex mutex_;  // serializes write() and pruning
  std::uint64_t next_generation_ = 1;
};

}  // namespace ntk::daemon
