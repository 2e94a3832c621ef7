// CRC-32C (Castagnoli): the checksum of ntk.v1 snapshot files.
//
// WHAT THIS COMPUTES
//   The 32-bit CRC with the Castagnoli polynomial 0x1EDC6F41 (bit-reflected 0x82F63B78),
//   initial value 0xFFFFFFFF, reflected input and output, final XOR 0xFFFFFFFF: the
//   checksum of iSCSI (RFC 3720, appendix B.4), SCTP, ext4 and LevelDB/RocksDB, whose
//   check value is crc32c("123456789") == 0xE3069283. Software, slicing-by-8 (eight
//   256-entry tables, 8 bytes per step); the result does not depend on the machine.
//
// THREAD SAFETY: pure functions.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace ntk::daemon {

// Extends a CRC-32C: crc32c_extend(crc32c(a), b) == crc32c(a followed by b), and
// crc32c_extend(0, a) == crc32c(a).
std::uint32_t crc32c_extend(std::uint32_t crc, std::span<const std::uint8_t> bytes);

inline std::uint32_t crc32c(std::span<const std::uint8_t> bytes) { return crc32c_extend(0, bytes); }
inline std::uint32_t crc32c(std::string_view bytes) {
  return crc32c_extend(0, {reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()});
}

}  // namespace ntk::daemon
