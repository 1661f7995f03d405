#include "selfstudy/process_group.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

// The gloo backend's header is compiled only in this file; it needs gloo's own headers (Debian's
// libgloo-dev: the wheel does not ship them) and is guarded by the macro libtorch itself was built with.
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace cartridge {

namespace {

// The first sentence of a c10d/gloo message without the source location gloo puts in front
// ("[/path/pair.cc:553] Connection closed by peer [host]:port. This is typically caused by ...").
std::string short_message(const std::exception& error) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&error);
  std::string text = c10_error ? c10_error->what_without_backtrace() : error.what();
  text = text.substr(0, text.find('\n'));
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find("] ");
    if (close != std::string::npos) text = text.substr(close + 2);
  }
  return text.substr(0, text.find(". "));
}

std::optional<std::string> environment_variable(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

int64_t integer_variable(const char* name, const std::optional<int64_t>& fallback) {
  const std::optional<std::string> text = environment_variable(name);
  if (!text) {
    if (fallback) return *fallback;
    throw InvalidArgumentError(fmt::format(
        "{} is not set, but WORLD_SIZE is: launch with torchrun, or set RANK, WORLD_SIZE, MASTER_ADDR and "
        "MASTER_PORT for every process (docs/distributed.md)",
        name));
  }
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text->c_str(), &end, 10);
  if (errno != 0 || end == text->c_str() || *end != '\0' || value < 0) {
    throw InvalidArgumentError(fmt::format(
        "{}={} is not a non-negative integer (torchrun's variables: docs/distributed.md)", name, *text));
  }
  return value;
}

constexpr char kAlivePrefix[] = "alive/";
constexpr char kWaitPrefix[] = "wait/";
constexpr char kCounterPrefix[] = "counter/";

}  // namespace

std::optional<TorchrunEnvironment> torchrun_environment() {
  if (!environment_variable("WORLD_SIZE")) return std::nullopt;
  TorchrunEnvironment environment;
  environment.world_size = integer_variable("WORLD_SIZE", std::nullopt);
  environment.rank = integer_variable("RANK", std::nullopt);
  environment.local_rank = integer_variable("LOCAL_RANK", int64_t{0});
  if (environment.world_size < 1 || environment.rank >= environment.world_size) {
    throw InvalidArgumentError(fmt::format("RANK={} with WORLD_SIZE={}: the rank must be in [0, WORLD_SIZE)",
                                           environment.rank, environment.world_size));
  }
  if (environment.world_size == 1) return environment;  // nothing to join
  environment.master_address = environment_variable("MASTER_ADDR").value_or("");
  if (environment.master_address.empty()) {
    throw InvalidArgumentError(
        "MASTER_ADDR is not set, but WORLD_SIZE is: set it to the host of rank 0 (docs/distributed.md)");
  }
  const int64_t port = integer_variable("MASTER_PORT", std::nullopt);
  if (port < 1 || port > 65535) {
    throw InvalidArgumentError(fmt::format("MASTER_PORT={} is not a TCP port (1..65535)", port));
  }
  environment.master_port = static_cast<int>(port);
  environment.agent_serves_store = environment_variable("TORCHELASTIC_USE_AGENT_STORE") == "True";
  return environment;
}

struct ProcessGroup::Connection {
  c10::intrusive_ptr<c10d::Store> store;  // our keys, under "cartridge/"
  c10::intrusive_ptr<c10d::Backend> gloo;
  mutable int64_t wait_sequence = 0;  // makes each wait_for_all's key unique

  // Heartbeat: a thread with its own store connection bumps alive/<rank> while the process lives, so a
  // rank that waits long for slower ones can tell "slow" from "gone".
  c10::intrusive_ptr<c10d::Store> heartbeat_store;
  std::thread heartbeat;
  std::mutex heartbeat_mutex;
  std::condition_variable heartbeat_wakeup;
  bool stopping = false;

  ~Connection() {
    {
      std::lock_guard<std::mutex> lock(heartbeat_mutex);
      stopping = true;
    }
    heartbeat_wakeup.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
  }
};

ProcessGroup::ProcessGroup() = default;

ProcessGroup::ProcessGroup(const TorchrunEnvironment& environment, std::chrono::milliseconds timeout)
    : rank_(environment.rank), world_size_(environment.world_size), timeout_(timeout) {
  if (world_size_ == 1) return;
  connection_ = std::make_unique<Connection>();
  const std::string where = fmt::format("{}:{}", environment.master_address, environment.master_port);
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<uint16_t>(environment.master_port);
  store_options.isServer = environment.rank == 0 && !environment.agent_serves_store;
  store_options.numWorkers = static_cast<int>(world_size_);
  store_options.waitWorkers = false;
  store_options.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> tcp_store;
  try {
    tcp_store = c10::make_intrusive<c10d::TCPStore>(environment.master_address, store_options);
    c10d::TCPStoreOptions client_options = store_options;
    client_options.isServer = false;
    connection_->heartbeat_store = c10::make_intrusive<c10d::PrefixStore>(
        "cartridge", c10::make_intrusive<c10d::TCPStore>(environment.master_address, client_options));
  } catch (const std::exception& error) {
    throw DistributedError(fmt::format(
        "{}: cannot reach the rendezvous store at {} within {} s ({}): check MASTER_ADDR/MASTER_PORT, that "
        "rank 0 was started, and that no other program holds the port",
        describe(), where, timeout.count() / 1000.0, short_message(error)));
  }
  connection_->store = c10::make_intrusive<c10d::PrefixStore>("cartridge", tcp_store);
  try {
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(timeout);
    // As torch.distributed does: GLOO_SOCKET_IFNAME picks the network interface, else the address the
    // host name resolves to (loopback when it resolves to none).
    const std::optional<std::string> interface = environment_variable("GLOO_SOCKET_IFNAME");
    gloo_options->devices.push_back(interface ? c10d::ProcessGroupGloo::createDeviceForInterface(*interface)
                                              : c10d::ProcessGroupGloo::createDefaultDevice());
    connection_->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("cartridge/gloo", tcp_store), static_cast<int>(rank_),
        static_cast<int>(world_size_), gloo_options);
  } catch (const std::exception& error) {
    throw DistributedError(fmt::format("{}: the {} ranks did not all join within {} s ({})", describe(),
                                       world_size_, timeout.count() / 1000.0, short_message(error)));
  }
  // A beat several times per timeout, so a live rank is never taken for a dead one.
  const auto period = std::clamp(timeout / 8, std::chrono::milliseconds(50), std::chrono::milliseconds(2000));
  Connection* connection = connection_.get();
  const std::string alive_key = kAlivePrefix + std::to_string(rank_);
  connection->heartbeat_store->add(alive_key, 1);
  connection->heartbeat = std::thread([connection, alive_key, period] {
    std::unique_lock<std::mutex> lock(connection->heartbeat_mutex);
    while (
        !connection->heartbeat_wakeup.wait_for(lock, period, [connection] { return connection->stopping; })) {
      try {
        connection->heartbeat_store->add(alive_key, 1);
      } catch (const std::exception&) {
        return;  // the store is gone (rank 0 ended): the next collective reports it
      }
    }
  });
}

ProcessGroup::~ProcessGroup() = default;

std::shared_ptr<ProcessGroup> ProcessGroup::from_environment(std::chrono::milliseconds timeout) {
  const std::optional<TorchrunEnvironment> environment = torchrun_environment();
  if (!environment) return std::make_shared<ProcessGroup>();
  return std::make_shared<ProcessGroup>(*environment, timeout);
}

std::string ProcessGroup::describe() const {
  return distributed() ? fmt::format("rank {} of {}", rank_, world_size_) : std::string();
}

std::vector<int64_t> ProcessGroup::share(int64_t count) const {
  std::vector<int64_t> positions;
  for (int64_t position = rank_; position < count; position += world_size_) positions.push_back(position);
  return positions;
}

namespace {

// Runs one c10d operation, turning its failure into a DistributedError that says what was going on.
void run_collective(const ProcessGroup& group, const std::string& what,
                    const std::function<void()>& operation) {
  try {
    operation();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    throw DistributedError(fmt::format(
        "{}: lost the other ranks during {} ({}): a rank exited, was killed, or hung for more than the "
        "{} s timeout (--distributed-timeout); see its output",
        group.describe(), what, short_message(error), group.timeout().count() / 1000.0));
  }
}

}  // namespace

void ProcessGroup::all_reduce_sum(at::Tensor& tensor, const std::string& what) const {
  if (!distributed()) return;
  at::Tensor host = tensor.is_cpu() && tensor.is_contiguous() ? tensor : tensor.to(at::kCPU).contiguous();
  std::vector<at::Tensor> tensors{host};
  run_collective(*this, what, [&] { connection_->gloo->allreduce(tensors)->wait(timeout_); });
  if (!host.is_same(tensor)) tensor.copy_(host);
}

void ProcessGroup::broadcast(at::Tensor& tensor, const std::string& what) const {
  if (!distributed()) return;
  at::Tensor host = tensor.is_cpu() && tensor.is_contiguous() ? tensor : tensor.to(at::kCPU).contiguous();
  std::vector<at::Tensor> tensors{host};
  c10d::BroadcastOptions options;
  options.rootRank = 0;
  run_collective(*this, what, [&] { connection_->gloo->broadcast(tensors, options)->wait(timeout_); });
  if (!host.is_same(tensor)) tensor.copy_(host);
}

bool ProcessGroup::any(bool value, const std::string& what) const {
  if (!distributed()) return value;
  at::Tensor flag = at::full({1}, value ? 1 : 0, at::kLong);
  all_reduce_sum(flag, what);
  return flag.item<int64_t>() > 0;
}

std::string ProcessGroup::broadcast_string(const std::string& value, const std::string& what) const {
  if (!distributed()) return value;
  at::Tensor length = at::full({1}, static_cast<int64_t>(value.size()), at::kLong);
  broadcast(length, what);
  at::Tensor bytes = at::zeros({length.item<int64_t>()}, at::kByte);
  if (writes()) std::copy(value.begin(), value.end(), bytes.data_ptr<uint8_t>());
  broadcast(bytes, what);
  const auto* data = reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>());
  return std::string(data, data + bytes.numel());
}

void ProcessGroup::check_same_as_writer(const std::string& value, const std::string& what) const {
  if (!distributed()) return;
  const bool differs = broadcast_string(value, "comparing " + what) != value;
  // Every rank learns whether any differs, so they all stop together instead of waiting on each other.
  if (any(differs, "comparing " + what)) {
    throw MismatchError(fmt::format(
        "{}: {} differ between the ranks ({}): every rank must run the same command on the same files",
        describe(), what, differs ? "this rank's differ from rank 0's" : "another rank's differ from these"));
  }
}

void ProcessGroup::wait_for_all(const std::string& name) const {
  if (!distributed()) return;
  const std::string key = fmt::format("{}{}/{}", kWaitPrefix, ++connection_->wait_sequence, name);
  using Clock = std::chrono::steady_clock;
  std::vector<int64_t> last_beat(world_size_, -1);
  std::vector<Clock::time_point> last_change(world_size_, Clock::now());
  run_collective(*this, "the wait for every rank to finish " + name, [&] {
    c10d::Store& store = *connection_->store;
    // Adds this rank to `counter`, then polls it until every rank has, watching the others' heartbeats.
    const auto arrive_and_wait = [&](const std::string& counter) {
      int64_t arrived = store.add(counter, 1);
      while (arrived < world_size_) {
        for (int64_t other = 0; other < world_size_; ++other) {
          if (other == rank_) continue;
          const int64_t beat = store.add(kAlivePrefix + std::to_string(other), 0);
          const Clock::time_point now = Clock::now();
          if (beat != last_beat[other]) {
            last_beat[other] = beat;
            last_change[other] = now;
          } else if (now - last_change[other] > timeout_) {
            throw DistributedError(fmt::format(
                "{}: rank {} gave no sign of life for {} s while this rank waited for every rank to finish "
                "{} (it exited, was stopped, or lost its network); stopping",
                describe(), other, timeout_.count() / 1000.0, name));
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        arrived = store.add(counter, 0);
      }
    };
    arrive_and_wait(key);
    // Rank 0's process holds the store: it leaves only once every rank has seen the count, or a rank still
    // polling would lose its connection when rank 0 exits.
    if (rank_ == 0) {
      arrive_and_wait(key + "/seen");
    } else {
      store.add(key + "/seen", 1);
    }
  });
}

int64_t ProcessGroup::add_to_counter(const std::string& name, int64_t amount) const {
  if (!distributed()) return local_counters_[name] += amount;
  int64_t value = 0;
  run_collective(*this, "updating " + name,
                 [&] { value = connection_->store->add(kCounterPrefix + name, amount); });
  return value;
}

}  // namespace cartridge
