// The packet loop behind every Kernel::row(): after the GEMV has written the M dot
// products x . x_i into `out`, a body runs once per block of simd::kLanes consecutive
// points, reading the dot products and the cached per-point columns of its block and
// storing its kernel values back into `out`, in place (a block reads all it needs before
// it stores). The last, partial block sees copies padded with its last point, so the
// body is written once for full packets; padded lanes are computed and discarded.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <cstdint>

#include "simd.h"

namespace ntk::detail {

// Where a block reads from: the dot products (in `out`) and the column-major caches.
struct RowSource {
  double* dots = nullptr;  // M values; overwritten with the kernel values
  const double* caches = nullptr;
  Eigen::Index cache_ld = 0;  // caches outer stride
};

class FullBlock {
 public:
  FullBlock(const RowSource& s, Eigen::Index i) : s_(s), i_(i) {}
  simd::Packet dot() const { return simd::loadu(s_.dots + i_); }
  simd::Packet col(Eigen::Index j) const { return simd::loadu(s_.caches + j * s_.cache_ld + i_); }
  // Point index of lane `lane`.
  Eigen::Index point(int lane) const { return i_ + lane; }
  void store(const simd::Packet& v) const { simd::storeu(s_.dots + i_, v); }

 private:
  const RowSource& s_;
  Eigen::Index i_;
};

class TailBlock {
 public:
  TailBlock(const RowSource& s, Eigen::Index i, int count) : s_(s), i_(i), count_(count) {}
  simd::Packet dot() const { return gather(s_.dots + i_); }
  simd::Packet col(Eigen::Index j) const { return gather(s_.caches + j * s_.cache_ld + i_); }
  Eigen::Index point(int lane) const { return i_ + std::min(lane, count_ - 1); }
  void store(const simd::Packet& v) const {
    double buf[simd::kLanes];
    simd::storeu(buf, v);
    std::copy(buf, buf + count_, s_.dots + i_);
  }

 private:
  simd::Packet gather(const double* p) const {
    double buf[simd::kLanes];
    for (int l = 0; l < simd::kLanes; ++l) buf[l] = p[std::min(l, count_ - 1)];
    return simd::loadu(buf);
  }

  const RowSource& s_;
  Eigen::Index i_;
  int count_;
};

// Calls body(block) for the blocks covering points 0..m-1 in order; body is a generic
// callable taking `const auto&` (FullBlock or TailBlock).
template <typename Body>
void for_each_block(const RowSource& src, Eigen::Index m, Body&& body) {
  Eigen::Index i = 0;
  for (; i + simd::kLanes <= m; i += simd::kLanes) body(FullBlock(src, i));
  if (i < m) body(TailBlock(src, i, static_cast<int>(m - i)));
}

// Chunks of packets, for loops that run in stages over several packets (structure of
// arrays over a chunk, so that the stages' iterations are independent and overlap).
inline constexpr int kChunkPackets = 8;

// Calls body(npk, block_at) for chunks covering points 0..m-1 in order: block_at(p), for
// 0 <= p < npk <= kChunkPackets, is the block of the chunk's p-th packet. The full packets
// come in chunks of up to kChunkPackets FullBlocks; a last, partial packet comes alone, as
// a chunk of one TailBlock.
template <typename Body>
void for_each_chunk(const RowSource& src, Eigen::Index m, Body&& body) {
  constexpr Eigen::Index kStep = Eigen::Index{kChunkPackets} * simd::kLanes;
  const Eigen::Index full = m / simd::kLanes * simd::kLanes;
  for (Eigen::Index i = 0; i < full; i += kStep) {
    const int npk = static_cast<int>(std::min(kStep, full - i) / simd::kLanes);
    body(npk, [&src, i](int p) { return FullBlock(src, i + Eigen::Index{p} * simd::kLanes); });
  }
  if (full < m) {
    const int count = static_cast<int>(m - full);
    body(1, [&src, full, count](int /*p*/) { return TailBlock(src, full, count); });
  }
}

// The lanes of a mask as booleans.
struct LaneFlags {
  bool set[simd::kLanes];
  explicit LaneFlags(const simd::Packet& mask) {
    double buf[simd::kLanes];
    simd::storeu(buf, mask);
    for (int l = 0; l < simd::kLanes; ++l) set[l] = std::bit_cast<std::uint64_t>(buf[l]) != 0;
  }
};

}  // namespace ntk::detail
