// `/metrics`: what busd knows, in Prometheus's text format (version 0.0.4), from the same
// `$sys` answers as the API. Subjects and services beyond limits.max_tracked_subjects come as
// one series labelled "(other)", so the series a scraper keeps stay bounded.
#pragma once

#include "http/server.hpp"

#include "bus/broker.hpp"

#include <string>

namespace bus::http {

std::string render_metrics(broker::Broker& broker, const Server& server);

} // namespace bus::http
