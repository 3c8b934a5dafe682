// Replica choice for a request: prefix affinity (requests that share a prompt prefix go to
// the same replica, whose prefix cache then has it), unless that replica is loaded well
// beyond the least loaded one, in which case load wins. Pure logic, unit-tested.
//
// The affine replica is chosen by rendezvous hashing over the replicas' stable ids (the
// replica index in its model): when a replica stops being ready, only the prefixes that
// went to it move, and they come back when it does; every other prefix keeps its replica
// and its warm cache.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace inferbox::daemon {

// How many outstanding tokens more than the least loaded replica the affine replica may
// carry before load wins over affinity.
inline constexpr int64_t kAffinitySlackTokens = 4096;

// Index into `replica_ids` (distinct, non-empty) of the replica that prefixes hashing to
// `affinity` belong to.
size_t AffineReplica(std::span<const uint32_t> replica_ids, uint64_t affinity);

// Index into `outstanding_tokens` and `replica_ids` (one entry each per ready replica, same
// order, non-empty) for a request whose prompt prefix hashes to `affinity`.
size_t PickReplica(std::span<const int64_t> outstanding_tokens,
                   std::span<const uint32_t> replica_ids, uint64_t affinity,
                   int64_t slack_tokens = kAffinitySlackTokens);

// The affinity hash of a prompt: its first bytes (a shared system prompt or few-shot
// prefix is what repeats).
uint64_t PromptAffinity(std::string_view prompt_prefix);

}  // namespace inferbox::daemon
