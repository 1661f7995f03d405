// ProcessGroup: torchrun's variables, a single process, and two real ranks (gloo over a TCPStore on the
// loopback) run by two threads of this test, checked against the sums and copies computed here.
#include "selfstudy/process_group.h"

#include <cstdlib>
#include <functional>
#include <future>
#include <string>
#include <thread>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace cartridge {
namespace {

const char* const kVariables[] = {"RANK",        "WORLD_SIZE",  "LOCAL_RANK",
                                  "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE"};

// Sets torchrun's variables for one test and clears them afterwards.
class TorchrunVariables {
 public:
  TorchrunVariables() { clear(); }
  ~TorchrunVariables() { clear(); }
  void set(const char* name, const char* value) { setenv(name, value, 1); }

 private:
  static void clear() {
    for (const char* name : kVariables) unsetenv(name);
  }
};

std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const InvalidArgumentError& error) {
    return error.what();
  }
  return "";
}

TEST(TorchrunEnvironment, AbsentMeansOneProcess) {
  TorchrunVariables variables;
  EXPECT_FALSE(torchrun_environment().has_value());
  const auto group = ProcessGroup::from_environment(std::chrono::seconds(1));
  EXPECT_FALSE(group->distributed());
}

TEST(TorchrunEnvironment, ReadsTorchrunsVariables) {
  TorchrunVariables variables;
  variables.set("WORLD_SIZE", "4");
  variables.set("RANK", "3");
  variables.set("LOCAL_RANK", "1");
  variables.set("MASTER_ADDR", "node7");
  variables.set("MASTER_PORT", "29500");
  variables.set("TORCHELASTIC_USE_AGENT_STORE", "True");
  const std::optional<TorchrunEnvironment> environment = torchrun_environment();
  ASSERT_TRUE(environment.has_value());
  EXPECT_EQ(environment->world_size, 4);
  EXPECT_EQ(environment->rank, 3);
  EXPECT_EQ(environment->local_rank, 1);
  EXPECT_EQ(environment->master_address, "node7");
  EXPECT_EQ(environment->master_port, 29500);
  EXPECT_TRUE(environment->agent_serves_store);
}

TEST(TorchrunEnvironment, RefusesMissingOrBadVariablesNamingThem) {
  TorchrunVariables variables;
  variables.set("WORLD_SIZE", "2");
  EXPECT_NE(error_of([] { torchrun_environment(); }).find("RANK is not set"), std::string::npos);
  variables.set("RANK", "2");
  EXPECT_NE(error_of([] { torchrun_environment(); }).find("RANK=2 with WORLD_SIZE=2"), std::string::npos);
  variables.set("RANK", "one");
  EXPECT_NE(error_of([] { torchrun_environment(); }).find("RANK=one is not a non-negative integer"),
            std::string::npos);
  variables.set("RANK", "1");
  EXPECT_NE(error_of([] { torchrun_environment(); }).find("MASTER_ADDR is not set"), std::string::npos);
  variables.set("MASTER_ADDR", "127.0.0.1");
  variables.set("MASTER_PORT", "70000");
  EXPECT_NE(error_of([] { torchrun_environment(); }).find("MASTER_PORT=70000 is not a TCP port"),
            std::string::npos);
}

TEST(ProcessGroup, SingleProcessTakesEverythingAndWaitsForNobody) {
  const ProcessGroup group;
  EXPECT_EQ(group.rank(), 0);
  EXPECT_EQ(group.world_size(), 1);
  EXPECT_TRUE(group.writes());
  EXPECT_EQ(group.describe(), "");
  EXPECT_EQ(group.share(3), (std::vector<int64_t>{0, 1, 2}));
  at::Tensor tensor = at::arange(4, at::kFloat);
  group.all_reduce_sum(tensor, "a test");
  group.broadcast(tensor, "a test");
  EXPECT_TRUE(tensor.equal(at::arange(4, at::kFloat)));
  EXPECT_TRUE(group.any(true, "a test"));
  EXPECT_FALSE(group.any(false, "a test"));
  EXPECT_EQ(group.add_to_counter("things", 2), 2);
  EXPECT_EQ(group.add_to_counter("things", 3), 5);
  group.wait_for_all("nothing");
  group.check_same_as_writer("anything", "the settings");
}

int free_port() {
  const int socket_descriptor = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  ::bind(socket_descriptor, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  ::getsockname(socket_descriptor, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(socket_descriptor);
  return ntohs(address.sin_port);
}

// Runs `body(group)` as rank 0 and rank 1 of a real 2-rank group, one thread each; returns their results.
template <typename Result>
std::pair<Result, Result> on_two_ranks(const std::function<Result(const ProcessGroup&)>& body,
                                       std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  const int port = free_port();
  auto rank = [&](int64_t number) {
    TorchrunEnvironment environment;
    environment.rank = number;
    environment.world_size = 2;
    environment.master_address = "127.0.0.1";
    environment.master_port = port;
    const ProcessGroup group(environment, timeout);
    return body(group);
  };
  auto first = std::async(std::launch::async, rank, 0);
  auto second = std::async(std::launch::async, rank, 1);
  return {first.get(), second.get()};
}

TEST(ProcessGroup, TwoRanksSumCopyAndShare) {
  const auto [zero, one] = on_two_ranks<std::vector<std::string>>([](const ProcessGroup& group) {
    std::vector<std::string> seen;
    seen.push_back(group.describe());
    at::Tensor values = at::full({3}, static_cast<double>(group.rank() + 1), at::kDouble);
    group.all_reduce_sum(values, "a test");
    seen.push_back(std::to_string(values.sum().item<double>()));  // (1 + 2) * 3
    at::Tensor copied = at::full({2}, static_cast<float>(group.rank() * 10 + 7), at::kFloat);
    group.broadcast(copied, "a test");
    seen.push_back(std::to_string(copied[1].item<float>()));  // rank 0's 7
    seen.push_back(group.broadcast_string(group.writes() ? "from rank 0" : "ignored", "a test"));
    seen.push_back(std::to_string(group.any(group.rank() == 1, "a test")));
    seen.push_back(std::to_string(group.share(5).size()));  // 0 2 4 | 1 3
    group.wait_for_all("the test");
    return seen;
  });
  EXPECT_EQ(zero, (std::vector<std::string>{"rank 0 of 2", "9.000000", "7.000000", "from rank 0", "1", "3"}));
  EXPECT_EQ(one, (std::vector<std::string>{"rank 1 of 2", "9.000000", "7.000000", "from rank 0", "1", "2"}));
}

TEST(ProcessGroup, DifferentSettingsStopEveryRank) {
  const auto [zero, one] = on_two_ranks<std::string>([](const ProcessGroup& group) {
    try {
      group.check_same_as_writer(group.writes() ? "dataset A" : "dataset B", "the training settings");
    } catch (const MismatchError& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  });
  EXPECT_NE(zero.find("rank 0 of 2: the training settings differ between the ranks"), std::string::npos)
      << zero;
  EXPECT_NE(one.find("rank 1 of 2: the training settings differ between the ranks"), std::string::npos)
      << one;
}

TEST(ProcessGroup, WaitingOutlastsASlowRankButNotAGoneOne) {
  // Rank 1 works for twice the timeout before it arrives (its heartbeat goes on): rank 0 waits for it.
  const auto [slow_zero, slow_one] = on_two_ranks<std::string>(
      [](const ProcessGroup& group) {
        if (!group.writes()) std::this_thread::sleep_for(2 * group.timeout());
        group.wait_for_all("the slow work");
        return std::string("arrived");
      },
      std::chrono::milliseconds(1500));
  EXPECT_EQ(slow_zero, "arrived");
  EXPECT_EQ(slow_one, "arrived");
  // Rank 1 leaves without arriving (its heartbeat stops with its group): rank 0 stops after the timeout.
  const auto [zero, one] = on_two_ranks<std::string>(
      [](const ProcessGroup& group) {
        if (!group.writes()) return std::string("left");
        std::this_thread::sleep_for(std::chrono::milliseconds(200));  // rank 1 is gone by now
        try {
          group.wait_for_all("the synthesis");
        } catch (const DistributedError& error) {
          return std::string(error.what());
        }
        return std::string("no error");
      },
      std::chrono::milliseconds(1500));
  EXPECT_NE(
      zero.find("rank 0 of 2: rank 1 gave no sign of life for 1.5 s while this rank waited for every rank "
                "to finish the synthesis"),
      std::string::npos)
      << zero;
}

}  // namespace
}  // namespace cartridge
