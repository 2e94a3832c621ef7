// Control.Configure requests as the stream and daemon tests build them.
#pragma once

#include <string>

#include "ntk/v1/request.pb.h"

namespace ntk::test {

// Configures a key (prefix false) or a key prefix (true) with the series fields given; a
// field <= 0 is left unset, so that the Configure merges onto earlier ones.
inline v1::Request control_configure(bool prefix, const std::string& target, int lags,
                                     int warmup = 0, int horizon = 0) {
  v1::Request r;
  v1::Control::Configure* c = r.mutable_control()->mutable_configure();
  if (prefix) {
    c->set_key_prefix(target);
  } else {
    c->set_key(target);
  }
  v1::SeriesConfig* s = c->mutable_config()->mutable_series();
  if (lags > 0) s->set_lags(lags);
  if (warmup > 0) s->set_warmup(warmup);
  if (horizon > 0) s->set_horizon(horizon);
  return r;
}

}  // namespace ntk::test
