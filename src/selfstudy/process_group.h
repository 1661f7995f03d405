// Self-study across processes (docs/distributed.md): the processes torchrun (or Slurm, or the environment
// variables alone) starts, joined through c10d as shipped in our libtorch: a TCPStore for rendezvous and
// small messages, ProcessGroupGloo for the collectives. No networking of our own.
//
// A ProcessGroup is either a single process (rank 0 of 1: every operation returns at once, so the code
// paths are the same) or rank r of W. Rank 0 is the writing rank: it alone writes files, progress bars and
// --json output. Every failure to hear from the other ranks (a rank exited, was killed, or hung for longer
// than the timeout) becomes a DistributedError naming this rank and the operation, never a hang.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "util/error.h"

namespace cartridge {

// The other ranks could not be reached (or disagree) during a collective operation.
class DistributedError : public Error {
 public:
  using Error::Error;
};

// What torchrun (or a launcher that imitates it) puts in a worker's environment.
struct TorchrunEnvironment {
  int64_t rank = 0;            // RANK
  int64_t world_size = 1;      // WORLD_SIZE
  int64_t local_rank = 0;      // LOCAL_RANK (0 when unset)
  std::string master_address;  // MASTER_ADDR: the host of the TCPStore
  int master_port = 0;         // MASTER_PORT
  // TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent already serves the store at MASTER_PORT, so rank 0
  // connects to it as a client; otherwise rank 0 serves it.
  bool agent_serves_store = false;
};

// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (and TORCHELASTIC_USE_AGENT_STORE).
// nullopt when WORLD_SIZE is unset (a plain single-process run). Throws InvalidArgumentError naming the
// variable when one is missing or malformed.
std::optional<TorchrunEnvironment> torchrun_environment();

class ProcessGroup {
 public:
  // A single process: rank 0 of 1.
  ProcessGroup();
  // Joins the other ranks (rendezvous through the TCPStore, then a gloo group). `timeout` bounds every
  // wait: the rendezvous, each collective, and wait_for_all's silence from a rank. Throws DistributedError
  // when the others do not come within it.
  ProcessGroup(const TorchrunEnvironment& environment, std::chrono::milliseconds timeout);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  // The group torchrun's variables describe, or a single process without them.
  static std::shared_ptr<ProcessGroup> from_environment(std::chrono::milliseconds timeout);

  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  bool distributed() const { return world_size_ > 1; }
  bool writes() const { return rank_ == 0; }  // the rank that writes files and output
  std::chrono::milliseconds timeout() const { return timeout_; }
  std::string describe() const;  // "rank 1 of 2" ("" for a single process)

  // The positions of `count` items this rank takes: rank, rank + W, rank + 2W, ... (all for one process).
  std::vector<int64_t> share(int64_t count) const;

  // Sums `tensor` over the ranks, in place; every rank gets the same bits. Any dtype gloo reduces (float32,
  // float64, int64); a tensor on another device goes through host memory. `what` names the operation in
  // errors.
  void all_reduce_sum(at::Tensor& tensor, const std::string& what) const;
  // Replaces `tensor` with rank 0's, in place (same shape and dtype on every rank).
  void broadcast(at::Tensor& tensor, const std::string& what) const;
  // True on every rank when `value` is true on any.
  bool any(bool value, const std::string& what) const;
  // rank 0's string on every rank.
  std::string broadcast_string(const std::string& value, const std::string& what) const;
  // Throws MismatchError on the ranks whose `value` differs from rank 0's: `what` says what must agree.
  void check_same_as_writer(const std::string& value, const std::string& what) const;

  // Waits until every rank has called wait_for_all with the same `name` (a barrier for work of uneven
  // length, such as synthesis shares): however long the others take while they are alive, but a rank whose
  // heartbeat stops for the timeout (it died, was stopped, or its machine left) makes it throw.
  void wait_for_all(const std::string& name) const;
  // Adds `amount` to a counter shared by the ranks and returns its new value (progress across ranks).
  int64_t add_to_counter(const std::string& name, int64_t amount) const;

 private:
  struct Connection;  // the c10d objects (kept out of this header: they need gloo's headers)

  int64_t rank_ = 0;
  int64_t world_size_ = 1;
  std::chrono::milliseconds timeout_{0};
  std::unique_ptr<Connection> connection_;
  mutable std::map<std::string, int64_t> local_counters_;  // add_to_counter's counters in a single process
};

}  // namespace cartridge
