// Set-up every gRPC process of the box (inferboxd, inferbox-engine; inferbox-bench as their
// client) makes before its first gRPC object. Part of inferbox_grpc_status, the gRPC helpers shared
// by servers and clients.
#pragma once

namespace inferbox {

// Turns Abseil's mutex deadlock detection off. Debian's Abseil is built without NDEBUG, so
// every absl::Mutex lock (gRPC's own mutexes are absl::Mutex) takes one process-wide spin lock
// and looks the mutex up in a graph of every mutex held: per-token CPU, serialised over all
// of gRPC's threads, for a check meant for debug builds. Call it first thing in main.
void DisableMutexDeadlockDetection();

}  // namespace inferbox
