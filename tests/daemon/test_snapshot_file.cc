// Snapshot files: the byte layout, all-or-nothing decoding (every truncation and every
// corrupted byte refused), atomic writes and the snapshot directory.
#include <doctest/doctest.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/util/message_differencer.h>
#include <sys/stat.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "snapshot_file.h"
#include "temp_dir.h"

namespace {

using ntk::daemon::decode_snapshot;
using ntk::daemon::encode_snapshot;
using ntk::daemon::SnapshotContents;
using ntk::daemon::SnapshotError;
using ntk::daemon::SnapshotStore;
using ntk::test::TempDir;
namespace v1 = ntk::v1;

// A bit-at-a-time CRC-32C (the definition), independent of the code under test.
std::uint32_t reference_crc32c(std::string_view bytes) {
  std::uint32_t c = 0xFFFFFFFFu;
  for (char ch : bytes) {
    c ^= static_cast<std::uint8_t>(ch);
    for (int i = 0; i < 8; ++i) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return c ^ 0xFFFFFFFFu;
}

// Length-delimited form, written by hand (varint, then the message).
void append_frame(const google::protobuf::MessageLite& m, std::string& out) {
  std::string body = m.SerializeAsString();
  std::uint64_t n = body.size();
  while (n >= 0x80) {
    out.push_back(static_cast<char>((n & 0x7F) | 0x80));
    n >>= 7;
  }
  out.push_back(static_cast<char>(n));
  out += body;
}

v1::KeySnapshot make_key(const std::string& key, double seed) {
  v1::KeySnapshot k;
  k.set_key(key);
  k.set_kind(v1::KeySnapshot::KIND_SENSOR_READING);
  k.set_last_seq(static_cast<std::uint64_t>(seed * 100));
  k.mutable_config()->mutable_series()->set_lags(4);
  v1::SeriesState* s = k.mutable_series();
  s->set_slots(17);
  s->set_last_seq(static_cast<std::uint64_t>(seed * 100));
  for (int i = 0; i < 4; ++i) s->add_lag_values(seed + 0.1 * i);
  v1::ModelState* m = s->mutable_model();
  m->set_dim(4);
  m->mutable_inputs()->set_rows(3);
  m->mutable_inputs()->set_cols(4);
  for (int i = 0; i < 12; ++i) m->mutable_inputs()->add_values(seed * i - 0.5);
  for (int i = 0; i < 3; ++i) m->add_mu(seed / (i + 1));
  m->set_updates(1234);
  m->set_last_drift(1e-14);
  return k;
}

v1::SnapshotHeader make_header() {
  v1::SnapshotHeader h;
  h.set_created_unix_nano(1700000000123456789ull);
  h.set_writer("ntkd test");
  h.mutable_config()->add_tcp_listen("127.0.0.1:0");
  v1::PrefixOverride* p = h.add_configured_prefixes();
  p->set_key_prefix("fx/");
  p->mutable_config()->set_tick_value(v1::TICK_VALUE_LOG_RETURN);
  return h;
}

std::vector<v1::KeySnapshot> make_keys() {
  return {make_key("a", 1.5), make_key("b/0", -2.25), make_key("b/1", 3.0)};
}

bool equal(const google::protobuf::Message& a, const google::protobuf::Message& b) {
  return google::protobuf::util::MessageDifferencer::Equals(a, b);
}

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::string decode_error(std::string_view bytes) {
  try {
    decode_snapshot(bytes);
  } catch (const SnapshotError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("snapshot: encode/decode round trip") {
  const auto keys = make_keys();
  const std::string bytes = encode_snapshot(make_header(), keys);
  const SnapshotContents c = decode_snapshot(bytes);
  CHECK(c.header.magic() == 0x534b544eu);
  CHECK(c.header.format_version() == 2u);
  CHECK(c.header.writer() == "ntkd test");
  CHECK(c.header.created_unix_nano() == 1700000000123456789ull);
  REQUIRE(c.header.configured_prefixes_size() == 1);
  CHECK(c.header.configured_prefixes(0).key_prefix() == "fx/");
  REQUIRE(c.keys.size() == keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) CHECK(equal(c.keys[i], keys[i]));
  CHECK(c.keys[1].series().model().inputs().values(5) == -2.25 * 5 - 0.5);

  // No keys at all is a valid (empty) snapshot.
  CHECK(decode_snapshot(encode_snapshot(make_header(), {})).keys.empty());
}

TEST_CASE("snapshot: byte layout — magic first, trailer last with the CRC of the prefix") {
  const auto keys = make_keys();
  const std::string bytes = encode_snapshot(make_header(), keys);
  // Rebuild the file by hand from the documented layout and compare byte for byte.
  v1::SnapshotHeader h = make_header();
  h.set_magic(0x534b544eu);
  h.set_format_version(2);
  std::string expected;
  append_frame(h, expected);
  for (const auto& k : keys) append_frame(k, expected);
  v1::SnapshotTrailer t;
  t.set_key_count(3);
  t.set_crc32c(reference_crc32c(expected));
  append_frame(t, expected);
  CHECK(bytes == expected);
  // The header's first field is the fixed32 magic: tag 0x0D, then "NTKS" on disk.
  const std::size_t prefix = 1 + (static_cast<unsigned char>(bytes[0]) >= 0x80 ? 1 : 0);
  CHECK(bytes.substr(prefix, 5) == std::string("\x0dNTKS"));
}

TEST_CASE("snapshot: every truncation is refused") {
  const std::string bytes = encode_snapshot(make_header(), make_keys());
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    const std::string err = decode_error(std::string_view(bytes).substr(0, n));
    INFO("truncated to ", n, " of ", bytes.size(), " bytes");
    REQUIRE(!err.empty());
  }
  CHECK(decode_error("") == "empty file");
  CHECK(decode_error(std::string_view(bytes).substr(0, bytes.size() - 3)).find("truncated") !=
        std::string::npos);
}

TEST_CASE("snapshot: every corrupted byte is refused") {
  google::protobuf::LogSilencer quiet;  // protobuf logs the invalid UTF-8 it meets
  const std::string bytes = encode_snapshot(make_header(), make_keys());
  std::string damaged = bytes;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    for (unsigned char flip : {0x01, 0x80, 0xFF}) {
      damaged[i] = static_cast<char>(bytes[i] ^ flip);
      INFO("byte ", i, " xor ", int{flip});
      REQUIRE(!decode_error(damaged).empty());
      damaged[i] = bytes[i];
    }
  }
  // A flipped bit inside a key record is caught by the checksum, and the message says so.
  const std::size_t mid = bytes.size() / 2;
  damaged[mid] = static_cast<char>(damaged[mid] ^ 0x04);
  CHECK(decode_error(damaged).find("checksum mismatch: stored 0x") != std::string::npos);
}

TEST_CASE("snapshot: refuses foreign files, unknown versions and inconsistent records") {
  CHECK(!decode_error("hello, world\n").empty());
  v1::SnapshotHeader other;
  other.set_magic(0x12345678u);
  other.set_format_version(1);
  std::string foreign;
  append_frame(other, foreign);
  CHECK(decode_error(foreign).find("bad magic") != std::string::npos);
  // A header that does not parse (here: its config holds text that is not UTF-8, which
  // ntkd now refuses at start) is named as such, not as a bad magic number.
  v1::SnapshotHeader latin1;
  latin1.set_magic(0x534b544eu);
  latin1.set_format_version(1);
  latin1.mutable_config()->set_snapshot_dir("/var/lib/caf\xE9");
  std::string unparsable;
  append_frame(latin1, unparsable);
  CHECK(decode_error(unparsable).find("the header does not parse as an ntk.v1.SnapshotHeader") ==
        0);

  auto build = [](const v1::SnapshotHeader& h, const std::vector<v1::KeySnapshot>& keys,
                  std::uint64_t count) {
    std::string out;
    append_frame(h, out);
    for (const auto& k : keys) append_frame(k, out);
    v1::SnapshotTrailer t;
    t.set_key_count(count);
    t.set_crc32c(reference_crc32c(out));
    append_frame(t, out);
    return out;
  };
  v1::SnapshotHeader h = make_header();
  h.set_magic(0x534b544eu);
  h.set_format_version(3);
  CHECK(decode_error(build(h, make_keys(), 3)) ==
        "snapshot format version 3 not supported (this reader knows versions 1 to 2)");
  h.set_format_version(0);
  CHECK(decode_error(build(h, make_keys(), 3)) ==
        "snapshot format version 0 not supported (this reader knows versions 1 to 2)");
  // Version 1 (before sigma_pending) is still read.
  h.set_format_version(1);
  CHECK(decode_error(build(h, make_keys(), 3)).empty());
  h.set_format_version(2);
  CHECK(decode_error(build(h, make_keys(), 3)).empty());
  CHECK(decode_error(build(h, make_keys(), 2)) ==
        "corrupt: trailer announces 2 keys, the file holds 3");
  auto unsorted = make_keys();
  std::swap(unsorted[0], unsorted[2]);
  CHECK(decode_error(build(h, unsorted, 3)).find("not strictly sorted") != std::string::npos);
  auto duplicate = make_keys();
  duplicate[1] = duplicate[0];
  CHECK(decode_error(build(h, duplicate, 3)).find("not strictly sorted") != std::string::npos);
  // A key record that is not a KeySnapshot at all (bytes that do not parse).
  std::string bad;
  append_frame(h, bad);
  bad += std::string("\x03\xff\xff\xff", 4);
  v1::SnapshotTrailer t;
  t.set_key_count(1);
  t.set_crc32c(reference_crc32c(bad));
  append_frame(t, bad);
  CHECK(decode_error(bad).find("key record 0") != std::string::npos);
  CHECK(decode_error(bad).find("does not parse") != std::string::npos);

  // The encoder refuses what the decoder would refuse.
  CHECK_THROWS_AS(encode_snapshot(make_header(), unsorted), std::invalid_argument);
  auto empty_key = make_keys();
  empty_key[0].clear_key();
  CHECK_THROWS_AS(encode_snapshot(make_header(), empty_key), std::invalid_argument);
}

TEST_CASE("write_file_atomically: replaces the file, leaves no temp, fails cleanly") {
  TempDir dir;
  const auto path = dir / "state.bin";
  ntk::daemon::write_file_atomically(path, "first");
  CHECK(read_all(path) == "first");
  ntk::daemon::write_file_atomically(path, std::string(100000, 'x'));
  CHECK(read_all(path) == std::string(100000, 'x'));
  CHECK(!std::filesystem::exists(path.string() + ".tmp"));
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0644);

  const auto nowhere = dir / "missing-dir" / "state.bin";
  try {
    ntk::daemon::write_file_atomically(nowhere, "x");
    FAIL("no exception");
  } catch (const SnapshotError& e) {
    CHECK(std::string(e.what()).find("cannot create") != std::string::npos);
  }
  CHECK(!std::filesystem::exists(nowhere));
}

TEST_CASE("SnapshotStore: generations, pruning, newest good snapshot, fallback") {
  TempDir dir;
  const auto snaps = dir / "snaps";
  auto keys = make_keys();
  {
    SnapshotStore store(snaps, 3);
    CHECK(store.files().empty());
    CHECK(!store.load_latest().snapshot);
    for (int i = 1; i <= 5; ++i) {
      keys[0].set_last_seq(static_cast<std::uint64_t>(i));
      const auto p = store.write(make_header(), keys);
      CHECK(p.filename() == SnapshotStore::file_name(static_cast<std::uint64_t>(i)));
    }
    const auto files = store.files();
    REQUIRE(files.size() == 3);
    CHECK(files[0].filename() == "snapshot-00000000000000000005.ntks");
    CHECK(files[2].filename() == "snapshot-00000000000000000003.ntks");
    const auto loaded = store.load_latest();
    REQUIRE(loaded.snapshot);
    CHECK(loaded.refused.empty());
    CHECK(loaded.snapshot->contents.keys[0].last_seq() == 5u);
  }
  // A second process (here: a second store) cannot take the directory while it is held.
  {
    SnapshotStore holder(snaps);
    try {
      SnapshotStore intruder(snaps);
      FAIL("the lock was not enforced");
    } catch (const SnapshotError& e) {
      CHECK(std::string(e.what()).find("in use by another process") != std::string::npos);
    }
  }
  // Corrupt the newest and truncate the next: both refused, generation 3 is used.
  const auto f5 = snaps / SnapshotStore::file_name(5);
  const auto f4 = snaps / SnapshotStore::file_name(4);
  std::string b5 = read_all(f5);
  b5[b5.size() / 2] = static_cast<char>(b5[b5.size() / 2] ^ 0x20);
  write_all(f5, b5);
  const std::string b4 = read_all(f4);
  write_all(f4, b4.substr(0, b4.size() - 10));
  // An interrupted write leaves a temp file; the store removes it at start.
  write_all(snaps / (SnapshotStore::file_name(6) + ".tmp"), "partial");
  {
    SnapshotStore store(snaps, 3);
    CHECK(!std::filesystem::exists(snaps / (SnapshotStore::file_name(6) + ".tmp")));
    const auto loaded = store.load_latest();
    REQUIRE(loaded.snapshot);
    CHECK(loaded.snapshot->path.filename() == SnapshotStore::file_name(3));
    CHECK(loaded.snapshot->contents.keys[0].last_seq() == 3u);
    REQUIRE(loaded.refused.size() == 2);
    CHECK(loaded.refused[0].path == f5);
    CHECK(loaded.refused[0].reason.find("checksum mismatch") != std::string::npos);
    CHECK(loaded.refused[0].reason.find(f5.string()) == 0);
    CHECK(loaded.refused[1].reason.find("truncated") != std::string::npos);
    // Both refused files are set aside under a name that says so: out of the pruning.
    CHECK(loaded.refused[0].kept_as == f5.string() + ".refused");
    CHECK(loaded.refused[1].kept_as == f4.string() + ".refused");
    CHECK(!std::filesystem::exists(f5));
    CHECK(read_all(f5.string() + ".refused") == b5);
    CHECK(store.files() == std::vector<std::filesystem::path>{snaps / SnapshotStore::file_name(3)});
    // A snapshot the caller refuses (e.g. a state that does not import) is set aside too;
    // the files set aside are tried first, newest first.
    const auto picky = store.load_latest([](const SnapshotContents& c) {
      if (c.keys[0].last_seq() == 3u) throw std::invalid_argument("key \"a\": bad state");
    });
    CHECK(!picky.snapshot);
    REQUIRE(picky.refused.size() == 3);
    CHECK(picky.refused[0].path == f5.string() + ".refused");
    CHECK(picky.refused[0].kept_as == picky.refused[0].path);
    CHECK(picky.refused[2].path == snaps / SnapshotStore::file_name(3));
    CHECK(picky.refused[2].reason.find("refused: key \"a\": bad state") != std::string::npos);
    CHECK(store.files().empty());
    CHECK(store.refused_files().size() == 3);
    // Writes continue above every generation; however many, none removes a refused file.
    for (int i = 6; i <= 10; ++i) {
      keys[0].set_last_seq(static_cast<std::uint64_t>(i));
      CHECK(store.write(make_header(), keys).filename() ==
            SnapshotStore::file_name(static_cast<std::uint64_t>(i)));
    }
    CHECK(store.files().size() == 3);
    CHECK(store.refused_files().size() == 3);
    // Without the caller that refused it, generation 3 is restored: renamed to the next
    // generation (11), the newest, so that it is what the next start restores.
    const auto plain = store.load_latest();
    REQUIRE(plain.snapshot);
    CHECK(plain.snapshot->path.filename() == SnapshotStore::file_name(11));
    CHECK(plain.snapshot->set_aside_as == snaps / (SnapshotStore::file_name(3) + ".refused"));
    CHECK(plain.snapshot->contents.keys[0].last_seq() == 3u);
    CHECK(plain.refused.size() == 2);
  }
  {
    SnapshotStore store(snaps, 3);
    CHECK(store.refused_files().size() == 2);
    const auto loaded = store.load_latest();
    REQUIRE(loaded.snapshot);
    CHECK(loaded.snapshot->path.filename() == SnapshotStore::file_name(11));
    CHECK(!loaded.snapshot->set_aside_as);
    CHECK(loaded.snapshot->contents.keys[0].last_seq() == 3u);
    CHECK(loaded.refused.size() == 2);  // 5 and 4 again, still kept
    CHECK(store.write(make_header(), keys).filename() == SnapshotStore::file_name(12));
    CHECK(store.files().size() == 3);
    CHECK(store.refused_files().size() == 2);
  }
}

TEST_CASE("SnapshotStore: a refused snapshot that cannot be set aside is never pruned") {
  TempDir dir;
  const auto snaps = dir / "snaps";
  const auto keys = make_keys();
  {
    SnapshotStore store(snaps, 2);
    store.write(make_header(), keys);
  }
  const auto f1 = snaps / SnapshotStore::file_name(1);
  // Something already has the name it would be set aside under (a directory, which is
  // refused in turn, with a reason rather than an exception).
  std::filesystem::create_directory(f1.string() + ".refused");
  SnapshotStore store(snaps, 2);
  const auto loaded = store.load_latest([](const SnapshotContents&) {
    throw std::invalid_argument("5 keys, more than max_keys = 4");
  });
  CHECK(!loaded.snapshot);
  REQUIRE(loaded.refused.size() == 2);
  CHECK(loaded.refused[0].path == f1.string() + ".refused");
  CHECK(loaded.refused[0].reason.find("read error") != std::string::npos);
  CHECK(loaded.refused[1].path == f1);
  CHECK(loaded.refused[1].kept_as == f1);
  CHECK(loaded.refused[1].reason.find("not set aside") != std::string::npos);
  for (int i = 0; i < 4; ++i) store.write(make_header(), keys);
  CHECK(std::filesystem::exists(f1));
  CHECK(store.files().size() == 3);  // the newest 2, and generation 1
}

TEST_CASE("SnapshotStore: file names") {
  CHECK(SnapshotStore::file_name(42) == "snapshot-00000000000000000042.ntks");
  CHECK(SnapshotStore::parse_generation("snapshot-00000000000000000042.ntks") == 42u);
  CHECK(SnapshotStore::parse_generation("snapshot-18446744073709551615.ntks") ==
        18446744073709551615ull);
  CHECK(!SnapshotStore::parse_generation("snapshot-18446744073709551616.ntks"));
  CHECK(!SnapshotStore::parse_generation("snapshot-0000000000000000004x.ntks"));
  CHECK(!SnapshotStore::parse_generation("snapshot-42.ntks"));
  CHECK(!SnapshotStore::parse_generation("snapshot-00000000000000000042.ntks.tmp"));
  CHECK(!SnapshotStore::parse_generation("LOCK"));
}

TEST_CASE("snapshot: header-only files, absurd lengths and empty keys, each named") {
  v1::SnapshotHeader h = make_header();
  h.set_magic(0x534b544eu);
  h.set_format_version(2);
  std::string header_only;
  append_frame(h, header_only);
  CHECK(decode_error(header_only) == "truncated: no trailer after the header");
  // A length no protobuf message has (2^31) is corruption, not a file cut short.
  CHECK(decode_error(std::string("\x80\x80\x80\x80\x08", 5)) ==
        "corrupt: frame 0 at offset 0 announces 2147483648 bytes (protobuf messages are below "
        "2 GiB)");
  CHECK(decode_error(std::string(11, '\x80') + std::string(1, '\0')) ==
        "corrupt: bad length prefix of frame 0 at offset 0");
  // A key record without a key, with a valid checksum and count.
  std::string out = header_only;
  v1::KeySnapshot k = make_key("a", 1.0);
  k.clear_key();
  append_frame(k, out);
  v1::SnapshotTrailer t;
  t.set_key_count(1);
  t.set_crc32c(reference_crc32c(out));
  append_frame(t, out);
  CHECK(decode_error(out) == "corrupt: key record 0 has an empty key");
}

TEST_CASE("write_file_atomically: a failed rename leaves no temp file") {
  TempDir dir;
  const auto path = dir / "taken";
  std::filesystem::create_directory(path);
  std::ofstream(path / "inside") << "x";  // a non-empty directory: rename(2) refuses
  try {
    ntk::daemon::write_file_atomically(path, "bytes");
    FAIL("no exception");
  } catch (const SnapshotError& e) {
    CHECK(std::string(e.what()).rfind(path.string() + ".tmp: rename: ", 0) == 0);
  }
  CHECK(!std::filesystem::exists(path.string() + ".tmp"));
  CHECK(std::filesystem::is_directory(path));
}

TEST_CASE("SnapshotStore: keep >= 1, foreign files kept, generations above set-aside files") {
  TempDir dir;
  CHECK_THROWS_AS(SnapshotStore(dir / "zero", 0), std::invalid_argument);

  const auto snaps = dir / "snaps";
  std::filesystem::create_directories(snaps);
  // Only the store's own temp files are removed at start, not an operator's.
  write_all(snaps / "notes.tmp", "mine");
  write_all(snaps / (SnapshotStore::file_name(2) + ".tmp"), "partial");
  // Only a file set aside, generation 7: new snapshots are written above it.
  write_all(snaps / (SnapshotStore::file_name(7) + ".refused"), "refused earlier");
  {
    SnapshotStore store(snaps, 2);
    CHECK(read_all(snaps / "notes.tmp") == "mine");
    CHECK(!std::filesystem::exists(snaps / (SnapshotStore::file_name(2) + ".tmp")));
    CHECK(store.write(make_header(), make_keys()).filename() == SnapshotStore::file_name(8));
  }
  // A refused snapshot whose set-aside name is taken by a regular file: neither is lost.
  const auto f8 = snaps / SnapshotStore::file_name(8);
  const std::string b8 = read_all(f8);
  write_all(f8.string() + ".refused", "an older refusal");
  SnapshotStore store(snaps, 2);
  const auto loaded = store.load_latest(
      [](const SnapshotContents&) { throw std::invalid_argument("not this one"); });
  CHECK(!loaded.snapshot);
  CHECK(read_all(f8.string() + ".refused") == "an older refusal");
  CHECK(read_all(f8) == b8);
  bool named = false;
  for (const auto& r : loaded.refused) {
    if (r.path == f8) {
      named = true;
      CHECK(r.kept_as == f8);
      CHECK(r.reason.find("(not set aside: " + f8.string() + ".refused: already exists)") !=
            std::string::npos);
    }
  }
  CHECK(named);
}
