// Helpers shared by the kernel variants (internal).
#pragma once

#include <Eigen/Core>
#include <cassert>
#include <stdexcept>
#include <string>
#include <string_view>

#include "ntk/core/kernel.h"

namespace ntk::detail {

// Public-boundary check of the scalar forms: x and y must have the same, non-zero size.
inline void check_pair(std::string_view kernel, Eigen::Index dx, Eigen::Index dy) {
  if (dx != dy || dx < 1) {
    throw std::invalid_argument(std::string(kernel) +
                                " kernel: points must have the same, non-zero dimension, got " +
                                std::to_string(dx) + " and " + std::to_string(dy));
  }
}

// Debug check of row()'s preconditions (the hot path does not throw).
inline void assert_row_shapes([[maybe_unused]] const Kernel& k,
                              [[maybe_unused]] const Eigen::Ref<const RowMatrixXd>& points,
                              [[maybe_unused]] const Eigen::Ref<const Eigen::MatrixXd>& caches,
                              [[maybe_unused]] Eigen::Index x_size,
                              [[maybe_unused]] Eigen::Index x_cache_size,
                              [[maybe_unused]] Eigen::Index out_size) {
  assert(points.cols() == x_size);
  assert(caches.rows() == points.rows() && caches.cols() == k.cache_size());
  assert(x_cache_size == k.cache_size());
  assert(out_size == points.rows());
}

}  // namespace ntk::detail
