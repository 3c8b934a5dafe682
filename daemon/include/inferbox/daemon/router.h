// Replica choice for a request: prefix affinity (requests that share a prompt prefix go to
// the same replica, whose prefix cache then has it), unless that replica is loaded well
// beyond the least loaded one, in which case load wins. Pure logic, unit-tested.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace inferbox::daemon {

// How many outstanding tokens more than the least loaded replica the affine replica may
// carry before load wins over affinity.
inline constexpr int64_t kAffinitySlackTokens = 4096;

// Index into `outstanding_tokens` (one entry per ready replica, in a stable order) for a
// request whose prompt prefix hashes to `affinity`. Requires a non-empty span.
size_t PickReplica(std::span<const int64_t> outstanding_tokens, uint64_t affinity,
                   int64_t slack_tokens = kAffinitySlackTokens);

// The affinity hash of a prompt: its first bytes (a shared system prompt or few-shot
// prefix is what repeats).
uint64_t PromptAffinity(std::string_view prompt_prefix);

}  // namespace inferbox::daemon
