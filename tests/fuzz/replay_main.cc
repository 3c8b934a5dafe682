// The main() of a fuzz target outside libFuzzer (every normal build): runs
// LLVMFuzzerTestOneInput over the files it is given (folders: every file inside, sorted), then
// over `--mutations` deterministic mutations of each (bytes flipped, cut, repeated, inserted,
// the input truncated), so ctest keeps every seed and every input that ever crashed a parser
// passing, and a little beyond. An input that crashes is written to ./crash-<target> (the
// test's working folder) before the process dies, so it can be replayed and added to the
// corpus. Coverage-guided fuzzing is `make fuzz` (scripts/fuzz.sh).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

// The input being run and where a crash saves it; read by the signal handler, so plain data.
const std::vector<uint8_t>* current_input = nullptr;
char crash_path[256] = "crash-input";

void SaveInputAndDie(int signal) {
  if (current_input != nullptr) {
    const int fd = ::open(crash_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      const ssize_t written = ::write(fd, current_input->data(), current_input->size());
      ::close(fd);
      static constexpr char kSaved[] = "fuzz replay: the input that crashed is in ./";
      if (written >= 0) {
        (void)!::write(STDERR_FILENO, kSaved, sizeof(kSaved) - 1);
        (void)!::write(STDERR_FILENO, crash_path, std::strlen(crash_path));
        (void)!::write(STDERR_FILENO, "\n", 1);
      }
    }
  }
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void Run(const std::string& input) {
  // A copy of exactly `size` bytes, as libFuzzer passes them: a read past the end is a read
  // past the heap block, which a sanitizer build reports.
  const std::vector<uint8_t> bytes(input.begin(), input.end());
  current_input = &bytes;
  LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
  current_input = nullptr;
}

std::string Mutate(std::string input, std::mt19937_64& rng) {
  const auto below = [&rng](size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng() % n); };
  const int edits = 1 + static_cast<int>(below(4));
  for (int i = 0; i < edits; ++i) {
    const size_t at = below(input.size() + 1);
    switch (below(6)) {
      case 0:  // Flip a byte.
        if (!input.empty()) input[below(input.size())] ^= static_cast<char>(1 + below(255));
        break;
      case 1:  // Cut a range.
        input.erase(at, 1 + below(16));
        break;
      case 2:  // Insert random bytes.
        for (size_t n = 1 + below(8); n > 0; --n) input.insert(at, 1, static_cast<char>(rng()));
        break;
      case 3:  // Repeat a range.
        if (!input.empty()) {
          const size_t from = below(input.size());
          input.insert(at, input.substr(from, 1 + below(32)));
        }
        break;
      case 4:  // Truncate.
        input.resize(at);
        break;
      default:  // Overwrite with a byte of the input elsewhere (keeps it plausible).
        if (!input.empty()) input[below(input.size())] = input[below(input.size())];
        break;
    }
  }
  return input;
}

}  // namespace

int main(int argc, char** argv) {
  int mutations = 200;
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with("--mutations=")) {
      mutations = std::atoi(argv[i] + 12);
      continue;
    }
    const std::filesystem::path path(arg);
    if (std::filesystem::is_directory(path)) {
      std::vector<std::filesystem::path> inside;
      for (const auto& entry : std::filesystem::recursive_directory_iterator(path)) {
        if (entry.is_regular_file()) inside.push_back(entry.path());
      }
      std::sort(inside.begin(), inside.end());
      files.insert(files.end(), inside.begin(), inside.end());
    } else if (std::filesystem::is_regular_file(path)) {
      files.push_back(path);
    } else {
      std::fprintf(stderr, "%s: no such file or folder: %s\n", argv[0], argv[i]);
      return 2;
    }
  }
  if (files.empty()) {
    std::fprintf(stderr, "usage: %s [--mutations=N] FILE_OR_FOLDER...\n", argv[0]);
    return 2;
  }
  std::snprintf(crash_path, sizeof(crash_path), "crash-%s",
                std::filesystem::path(argv[0]).filename().c_str());
  for (const int signal : {SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL}) {
    std::signal(signal, SaveInputAndDie);
  }
  const auto start = std::chrono::steady_clock::now();
  size_t runs = 0;
  for (const auto& file : files) {
    const std::string input = ReadFile(file);
    Run(input);
    ++runs;
    // Seeded by the file's name, so a failure repeats.
    std::mt19937_64 rng(std::hash<std::string>{}(file.filename().string()));
    for (int m = 0; m < mutations; ++m, ++runs) Run(Mutate(input, rng));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%s: %zu inputs (%zu files, %d mutations each) in %.1f s, none crashed\n", argv[0],
              runs, files.size(), mutations, seconds);
  return 0;
}
