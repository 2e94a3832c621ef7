// Snapshot files: encoding, all-or-nothing decoding, atomic writes, the store.
#include "snapshot_file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <ios>
#include <iterator>
#include <sstream>
#include <system_error>
#include <utility>

#include "crc32c.h"

namespace ntk::daemon {
namespace {

// Appends varint(message size) and the message.
void append_delimited(const google::protobuf::MessageLite& message, std::string& out) {
  const std::size_t n = message.ByteSizeLong();
  std::uint64_t v = n;
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
  const std::size_t at = out.size();
  out.resize(at + n);
  message.SerializeWithCachedSizesToArray(reinterpret_cast<std::uint8_t*>(out.data() + at));
}

std::string hex32(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

// One frame of the file: where its length prefix starts and its body.
struct Frame {
  std::size_t prefix_offset;
  std::string_view body;
};

// Splits the file into frames; SnapshotError if the last one runs past the end.
std::vector<Frame> split_frames(std::string_view bytes) {
  std::vector<Frame> frames;
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    const std::size_t start = pos;
    std::uint64_t length = 0;
    int shift = 0;
    for (;;) {
      if (pos == bytes.size()) {
        throw SnapshotError("truncated: the file ends inside the length prefix of frame " +
                            std::to_string(frames.size()) + " at offset " + std::to_string(start));
      }
      if (shift > 63) {
        throw SnapshotError("corrupt: bad length prefix of frame " + std::to_string(frames.size()) +
                            " at offset " + std::to_string(start));
      }
      const auto b = static_cast<std::uint8_t>(bytes[pos++]);
      length |= std::uint64_t{b & 0x7Fu} << shift;
      shift += 7;
      if ((b & 0x80u) == 0) break;
    }
    if (length > 0x7fffffffu) {
      throw SnapshotError("corrupt: frame " + std::to_string(frames.size()) + " at offset " +
                          std::to_string(start) + " announces " + std::to_string(length) +
                          " bytes (protobuf messages are below 2 GiB)");
    }
    if (length > bytes.size() - pos) {
      throw SnapshotError("truncated: frame " + std::to_string(frames.size()) + " at offset " +
                          std::to_string(start) + " announces " + std::to_string(length) +
                          " bytes, " + std::to_string(bytes.size() - pos) + " remain");
    }
    frames.push_back({start, bytes.substr(pos, static_cast<std::size_t>(length))});
    pos += static_cast<std::size_t>(length);
  }
  return frames;
}

}  // namespace

std::string encode_snapshot(const v1::SnapshotHeader& header,
                            std::span<const v1::KeySnapshot> keys) {
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (keys[i].key().empty()) {
      throw std::invalid_argument("encode_snapshot: key record " + std::to_string(i) +
                                  " has an empty key");
    }
    if (i > 0 && !(keys[i - 1].key() < keys[i].key())) {
      throw std::invalid_argument("encode_snapshot: keys not strictly sorted at record " +
                                  std::to_string(i) + " (\"" + keys[i].key() + "\")");
    }
  }
  v1::SnapshotHeader h = header;
  h.set_magic(kSnapshotMagic);
  h.set_format_version(kSnapshotFormatVersion);
  std::string out;
  append_delimited(h, out);
  for (const v1::KeySnapshot& k : keys) append_delimited(k, out);
  v1::SnapshotTrailer trailer;
  trailer.set_key_count(keys.size());
  trailer.set_crc32c(crc32c(out));
  append_delimited(trailer, out);
  return out;
}

SnapshotContents decode_snapshot(std::string_view bytes) {
  if (bytes.empty()) throw SnapshotError("empty file");
  const std::vector<Frame> frames = split_frames(bytes);

  SnapshotContents result;
  const Frame& first = frames.front();
  if (!result.header.ParseFromArray(first.body.data(), static_cast<int>(first.body.size()))) {
    // Damage, a foreign file, or text in the header that is not UTF-8.
    throw SnapshotError("the header does not parse as an ntk.v1.SnapshotHeader (" +
                        std::to_string(first.body.size()) +
                        " bytes): not an ntk snapshot, or damaged");
  }
  if (result.header.magic() != kSnapshotMagic) {
    throw SnapshotError("not an ntk snapshot: bad magic (expected the bytes \"NTKS\")");
  }
  const std::uint32_t version = result.header.format_version();
  if (version < kOldestSnapshotFormatVersion || version > kSnapshotFormatVersion) {
    throw SnapshotError("snapshot format version " + std::to_string(version) +
                        " not supported (this reader knows versions " +
                        std::to_string(kOldestSnapshotFormatVersion) + " to " +
                        std::to_string(kSnapshotFormatVersion) + ")");
  }
  if (frames.size() < 2) throw SnapshotError("truncated: no trailer after the header");

  const Frame& last = frames.back();
  v1::SnapshotTrailer trailer;
  const bool trailer_parsed =
      trailer.ParseFromArray(last.body.data(), static_cast<int>(last.body.size()));
  const std::uint32_t computed = crc32c(bytes.substr(0, last.prefix_offset));
  if (!trailer_parsed || trailer.crc32c() != computed) {
    throw SnapshotError("checksum mismatch: stored " + hex32(trailer.crc32c()) + ", computed " +
                        hex32(computed) + " (file truncated or corrupted)");
  }
  const std::size_t key_frames = frames.size() - 2;
  if (trailer.key_count() != key_frames) {
    throw SnapshotError("corrupt: trailer announces " + std::to_string(trailer.key_count()) +
                        " keys, the file holds " + std::to_string(key_frames));
  }

  result.keys.resize(key_frames);
  for (std::size_t i = 0; i < key_frames; ++i) {
    const Frame& f = frames[i + 1];
    v1::KeySnapshot& k = result.keys[i];
    if (!k.ParseFromArray(f.body.data(), static_cast<int>(f.body.size()))) {
      throw SnapshotError("corrupt: key record " + std::to_string(i) + " at offset " +
                          std::to_string(f.prefix_offset) + " does not parse");
    }
    if (k.key().empty()) {
      throw SnapshotError("corrupt: key record " + std::to_string(i) + " has an empty key");
    }
    if (i > 0 && !(result.keys[i - 1].key() < k.key())) {
      throw SnapshotError("corrupt: key records not strictly sorted at record " +
                          std::to_string(i) + " (\"" + k.key() + "\")");
    }
  }
  return result;
}

SnapshotContents read_snapshot_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw SnapshotError(path.string() + ": cannot open: " + errno_text(errno));
  std::string bytes;
  try {
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } catch (const std::ios_base::failure& e) {
    // libstdc++'s filebuf throws on a read error (EIO, a directory) whatever the mask.
    throw SnapshotError(path.string() + ": read error: " + e.what());
  }
  if (in.bad()) throw SnapshotError(path.string() + ": read error");
  try {
    return decode_snapshot(bytes);
  } catch (const SnapshotError& e) {
    throw SnapshotError(path.string() + ": " + e.what());
  }
}

void write_file_atomically(const std::filesystem::path& path, std::string_view bytes) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  const std::string where = tmp.string();
  auto fail = [&](const char* step, int err, int fd) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw SnapshotError(where + ": " + step + ": " + errno_text(err));
  };
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create", errno, -1);
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("write", errno, fd);
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) fail("fsync", errno, fd);
  if (::close(fd) != 0) fail("close", errno, -1);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename", errno, -1);
  // The rename is durable only once the directory entry is.
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) throw SnapshotError(dir.string() + ": cannot open directory: " + errno_text(errno));
  if (::fsync(dfd) != 0) {
    const int err = errno;
    ::close(dfd);
    throw SnapshotError(dir.string() + ": fsync of the directory: " + errno_text(err));
  }
  ::close(dfd);
}

// ---- SnapshotStore -----------------------------------------------------------------------

namespace {
constexpr std::string_view kPrefix = "snapshot-";
constexpr std::string_view kSuffix = ".ntks";
constexpr std::size_t kDigits = 20;
}  // namespace

std::string SnapshotStore::file_name(std::uint64_t generation) {
  char digits[32];
  std::snprintf(digits, sizeof digits, "%020llu", static_cast<unsigned long long>(generation));
  return std::string(kPrefix) + digits + std::string(kSuffix);
}

std::optional<std::uint64_t> SnapshotStore::parse_generation(std::string_view name) {
  if (name.size() != kPrefix.size() + kDigits + kSuffix.size() || !name.starts_with(kPrefix) ||
      !name.ends_with(kSuffix)) {
    return std::nullopt;
  }
  std::uint64_t g = 0;
  for (const char c : name.substr(kPrefix.size(), kDigits)) {
    if (c < '0' || c > '9') return std::nullopt;
    const std::uint64_t digit = static_cast<std::uint64_t>(c - '0');
    if (g > (UINT64_MAX - digit) / 10) return std::nullopt;
    g = g * 10 + digit;
  }
  return g;
}

SnapshotStore::SnapshotStore(std::filesystem::path dir, int keep)
    : dir_(std::move(dir)), keep_(keep) {
  if (keep < 1) throw std::invalid_argument("SnapshotStore: keep must be >= 1");
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) throw SnapshotError(dir_.string() + ": cannot create directory: " + ec.message());
  const std::filesystem::path lock = dir_ / "LOCK";
  lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) throw SnapshotError(lock.string() + ": cannot open: " + errno_text(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(lock_fd_);
    lock_fd_ = -1;
    throw SnapshotError(lock.string() + ": " +
                        (err == EWOULDBLOCK ? std::string("the snapshot directory is in use by "
                                                          "another process")
                                            : "cannot lock: " + errno_text(err)));
  }
  // Interrupted writes leave "<final name>.tmp" behind: never renamed, never valid.
  for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.ends_with(".tmp") && parse_generation(name.substr(0, name.size() - 4))) {
      std::filesystem::remove(entry.path(), ec);
    }
  }
  for (const bool set_aside : {false, true}) {
    const auto existing = scan(set_aside);
    if (!existing.empty()) {
      next_generation_ = std::max(next_generation_, existing.front().first + 1);
    }
  }
}

SnapshotStore::~SnapshotStore() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

SnapshotStore::Found SnapshotStore::scan(bool set_aside) const {
  Found found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
    std::string name = entry.path().filename().string();
    if (set_aside) {
      if (!name.ends_with(kRefusedSuffix)) continue;
      name.resize(name.size() - kRefusedSuffix.size());
    }
    if (auto g = parse_generation(name)) found.emplace_back(*g, entry.path());
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  return found;
}

std::vector<std::filesystem::path> SnapshotStore::files() const {
  std::vector<std::filesystem::path> out;
  for (auto& [g, p] : scan(false)) out.push_back(p);
  return out;
}

std::vector<std::filesystem::path> SnapshotStore::refused_files() const {
  std::vector<std::filesystem::path> out;
  for (auto& [g, p] : scan(true)) out.push_back(p);
  return out;
}

namespace {

// Renames `from` to `to` (which must not exist yet) and makes the rename durable; "" on
// success, otherwise why not.
std::string rename_durably(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::error_code ec;
  if (std::filesystem::symlink_status(to, ec).type() != std::filesystem::file_type::not_found) {
    return to.string() + ": already exists";
  }
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return "rename to " + to.string() + ": " + errno_text(errno);
  }
  const std::filesystem::path dir = to.has_parent_path() ? to.parent_path() : ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // best effort: the rename is done either way
    ::close(dfd);
  }
  return "";
}

}  // namespace

SnapshotStore::LoadResult SnapshotStore::load_latest(
    const std::function<void(const SnapshotContents&)>& accept) {
  std::lock_guard lock(mutex_);
  LoadResult result;
  // The contents if the file decodes and `accept` takes it; otherwise the refusal is
  // recorded (kept_as: where it is, the caller moves it if it must).
  auto try_file = [&](const std::filesystem::path& path) -> std::optional<SnapshotContents> {
    std::optional<SnapshotContents> contents;
    try {
      contents = read_snapshot_file(path);
    } catch (const SnapshotError& e) {
      result.refused.push_back({path, e.what(), path});
      return std::nullopt;
    }
    try {
      if (accept) accept(*contents);
    } catch (const std::exception& e) {
      result.refused.push_back({path, path.string() + ": refused: " + e.what(), path});
      return std::nullopt;
    }
    return contents;
  };

  // Files refused at an earlier start first: the configuration may allow them now.
  for (auto& [g, path] : scan(true)) {
    auto contents = try_file(path);
    if (!contents) continue;
    Loaded loaded{path, std::move(*contents), path};
    // It becomes the newest generation, so that later starts restore it (or what is
    // written after it), not the snapshots written while it was set aside.
    const std::filesystem::path newest = dir_ / file_name(next_generation_);
    if (rename_durably(path, newest).empty()) {
      loaded.path = newest;
      ++next_generation_;
    }
    result.snapshot = std::move(loaded);
    return result;
  }

  for (auto& [g, path] : scan(false)) {
    auto contents = try_file(path);
    if (contents) {
      result.snapshot = Loaded{path, std::move(*contents), std::nullopt};
      return result;
    }
    // Set the refused file aside, out of the pruning; if that fails, keep it where it is
    // and never prune it in this process either.
    Refusal& refusal = result.refused.back();
    const std::filesystem::path aside = path.string() + std::string(kRefusedSuffix);
    const std::string error = rename_durably(path, aside);
    if (error.empty()) {
      refusal.kept_as = aside;
    } else {
      refusal.reason += " (not set aside: " + error + ")";
      pinned_.push_back(g);
    }
  }
  return result;
}

std::filesystem::path SnapshotStore::write(const v1::SnapshotHeader& header,
                                           std::span<const v1::KeySnapshot> keys) {
  const std::string bytes = encode_snapshot(header, keys);
  std::lock_guard lock(mutex_);
  const std::filesystem::path path = dir_ / file_name(next_generation_);
  write_file_atomically(path, bytes);
  ++next_generation_;
  // The newest `keep` files stay; refused ones that could not be set aside are neither
  // counted nor removed.
  int kept = 0;
  std::error_code ec;
  for (const auto& [g, p] : scan(false)) {
    if (std::find(pinned_.begin(), pinned_.end(), g) != pinned_.end()) continue;
    if (kept < keep_) {
      ++kept;
      continue;
    }
    std::filesystem::remove(p, ec);
  }
  return path;
}

}  // namespace ntk::daemon
