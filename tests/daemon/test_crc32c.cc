// CRC-32C against published check values and a bit-at-a-time reference implementation.
#include <doctest/doctest.h>

#include <array>
#include <cstdint>
#include <random>
#include <vector>

#include "crc32c.h"

namespace {

using ntk::daemon::crc32c;
using ntk::daemon::crc32c_extend;

// The definition, one bit at a time: reflected polynomial 0x82F63B78, init and final
// XOR 0xFFFFFFFF. Independent of the table construction under test.
std::uint32_t crc32c_bitwise(const std::vector<std::uint8_t>& bytes) {
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::uint8_t b : bytes) {
    c ^= b;
    for (int i = 0; i < 8; ++i) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return c ^ 0xFFFFFFFFu;
}

std::vector<std::uint8_t> bytes_of(std::initializer_list<int> v) {
  std::vector<std::uint8_t> out;
  for (int x : v) out.push_back(static_cast<std::uint8_t>(x));
  return out;
}

}  // namespace

TEST_CASE("crc32c: the CRC catalogue check value") {
  CHECK(crc32c(std::string_view("123456789")) == 0xE3069283u);
  CHECK(crc32c(std::string_view("")) == 0x00000000u);
}

TEST_CASE("crc32c: RFC 3720 appendix B.4 test vectors") {
  std::vector<std::uint8_t> zeros(32, 0x00), ones(32, 0xFF), up(32), down(32);
  for (int i = 0; i < 32; ++i) {
    up[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(i);
    down[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(31 - i);
  }
  CHECK(crc32c(zeros) == 0x8A9136AAu);
  CHECK(crc32c(ones) == 0x62A8AB43u);
  CHECK(crc32c(up) == 0x46DD794Eu);
  CHECK(crc32c(down) == 0x113FDB5Cu);
  // An iSCSI SCSI Read (10) command PDU.
  const std::vector<std::uint8_t> pdu =
      bytes_of({0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
                0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00});
  CHECK(crc32c(pdu) == 0xD9963A56u);
}

TEST_CASE("crc32c: agrees with the bitwise definition for every length and alignment") {
  std::mt19937_64 rng(20240601);
  std::vector<std::uint8_t> buf(300);
  for (auto& b : buf) b = static_cast<std::uint8_t>(rng());
  for (std::size_t offset = 0; offset < 8; ++offset) {
    for (std::size_t n = 0; n + offset <= buf.size(); n += (n < 40 ? 1 : 13)) {
      const std::vector<std::uint8_t> piece(buf.begin() + static_cast<long>(offset),
                                            buf.begin() + static_cast<long>(offset + n));
      REQUIRE(crc32c({buf.data() + offset, n}) == crc32c_bitwise(piece));
    }
  }
}

TEST_CASE("crc32c: extending equals checksumming the concatenation") {
  std::mt19937_64 rng(7);
  std::vector<std::uint8_t> buf(1000);
  for (auto& b : buf) b = static_cast<std::uint8_t>(rng());
  const std::uint32_t whole = crc32c(buf);
  CHECK(whole == crc32c_bitwise(buf));
  for (std::size_t split : {0, 1, 7, 8, 9, 500, 999, 1000}) {
    const std::uint32_t head = crc32c({buf.data(), split});
    CHECK(crc32c_extend(head, {buf.data() + split, buf.size() - split}) == whole);
  }
  // A single flipped bit anywhere changes the checksum.
  for (std::size_t i = 0; i < buf.size(); i += 37) {
    buf[i] ^= 0x10;
    CHECK(crc32c(buf) != whole);
    buf[i] ^= 0x10;
  }
}
