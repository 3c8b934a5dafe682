// What `inferboxctl status` prints about the box's health, layer by layer: the daemon, each
// model (ready: a replica passed its canary recently), each engine (process, canary, GPU
// fault) and each GPU (healthy, or why not). A pure function of the GetStatus reply, so it is
// unit-tested without a daemon.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "inferbox/v1/admin.pb.h"

namespace inferbox::ctl {

// Rows of (label, text): "health" with the verdict, then one row per model, engine and GPU.
// Ages ("canary 3s ago") are counted from `now`.
std::vector<std::pair<std::string, std::string>> HealthRows(
    const inferbox::v1::GetStatusResponse& status, std::chrono::system_clock::time_point now);

}  // namespace inferbox::ctl
