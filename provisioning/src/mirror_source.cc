// A model on an HTTP(S) mirror (mirror.h), fetched with libcurl. Each file downloads into
// downloads/<sha256>.part, flock(2)ed while in use; an interrupted download keeps its part
// and the next try asks for the rest with a Range request. A completed part is checked
// against its digest and hard-linked into the staged model (a corrupt one is deleted); parts
// stay until the install commits, so a failure later in the model costs the next try nothing.
#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <mutex>

#include <fmt/format.h>

#include "file_ops.h"
#include "inferbox/common/version.h"
#include "inferbox/provisioning/bundle.h"
#include "inferbox/provisioning/mirror.h"
#include "sources.h"

namespace inferbox::provisioning {
namespace {

constexpr uint64_t kMaxSignatureBytes = 1024;
constexpr long kStallBytesPerSecond = 1024;

struct CurlFree {
  void operator()(CURL* handle) const { curl_easy_cleanup(handle); }
};

void InitCurlOnce() {
  static std::once_flag once;
  std::call_once(once, [] { INFERBOX_CHECK(curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK); });
}

// What one GET's callbacks share.
struct Request {
  // Small responses (manifest, signature) go here, up to max_bytes.
  std::string body;
  uint64_t max_bytes = 0;
  // A file download goes to `file` instead, starting at `resume_from`.
  HashingFileWriter* file = nullptr;
  Staging* staging = nullptr;
  uint64_t resume_from = 0;
  uint64_t expected_size = 0;
  bool started = false;
  std::optional<uint64_t> content_range_start;
  CURL* handle = nullptr;
  // Why a callback stopped the transfer.
  Status error;
};

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto& transfer = *static_cast<Request*>(user);
  std::string_view line(data, size * count);
  constexpr std::string_view kContentRange = "content-range:";
  if (line.size() > kContentRange.size()) {
    std::string name(line.substr(0, kContentRange.size()));
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (name == kContentRange) {
      // "Content-Range: bytes <first>-<last>/<total>"
      const auto bytes = line.find("bytes ");
      if (bytes != std::string_view::npos) {
        const char* begin = line.data() + bytes + 6;
        uint64_t first = 0;
        if (std::from_chars(begin, line.data() + line.size(), first).ec == std::errc()) {
          transfer.content_range_start = first;
        }
      }
    }
  }
  return size * count;
}

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto& transfer = *static_cast<Request*>(user);
  const std::string_view bytes(data, size * count);
  long code = 0;
  curl_easy_getinfo(transfer.handle, CURLINFO_RESPONSE_CODE, &code);
  if (code != 200 && code != 206) return bytes.size();  // An error page: only its status counts.
  if (transfer.file == nullptr) {
    if (transfer.body.size() + bytes.size() > transfer.max_bytes) {
      transfer.error = InvalidArgumentError(fmt::format(
          "the response is larger than the {} allowed", FormatBytes(transfer.max_bytes)));
      return 0;
    }
    transfer.body += bytes;
    return bytes.size();
  }
  if (!transfer.started) {
    transfer.started = true;
    if (code == 200) {
      // The server sent the whole file, not the rest of it: start over.
      transfer.error = transfer.file->Truncate();
    } else if (transfer.content_range_start == transfer.resume_from) {
      transfer.error = transfer.staging->AddBytes(transfer.resume_from);
    } else {
      transfer.error = UnavailableError(fmt::format(
          "asked for the bytes from {} on, the server sent another range", transfer.resume_from));
    }
    if (!transfer.error.ok()) return 0;
  }
  if (transfer.file->size() + bytes.size() > transfer.expected_size) {
    transfer.error = InvalidArgumentError(fmt::format(
        "the server sends more than the {} bytes the manifest lists", transfer.expected_size));
    return 0;
  }
  transfer.error = transfer.file->Append(bytes);
  if (transfer.error.ok()) transfer.error = transfer.staging->AddBytes(bytes.size());
  return transfer.error.ok() ? bytes.size() : 0;
}

class MirrorReader final : public ModelSourceReader {
 public:
  MirrorReader(MirrorSource source, const MirrorOptions& options, const StoreLimits& limits,
               SignatureCheck check_signatures, std::filesystem::path downloads_dir)
      : source_(std::move(source)),
        options_(options),
        limits_(limits),
        check_signatures_(std::move(check_signatures)),
        downloads_dir_(std::move(downloads_dir)) {}

  Result<SourcePlan> Plan() override {
    // Before anything touches the network.
    if (Status allowed = CheckMirrorUrl(source_.url, options_.allowed_url_prefixes);
        !allowed.ok()) {
      return allowed;
    }
    base_url_ = source_.url.ends_with('/') ? source_.url : source_.url + "/";
    InitCurlOnce();
    curl_.reset(curl_easy_init());
    INFERBOX_CHECK(curl_ != nullptr);

    auto manifest = FetchSmall(std::string(kBundleManifestName), limits_.max_manifest_bytes);
    if (!manifest.ok()) return manifest.status();
    if (!*manifest) {
      return NotFoundError(fmt::format("the mirror has no model at {} (no {} there)", base_url_,
                                       kBundleManifestName));
    }
    auto signature = FetchSmall(std::string(kBundleSignatureName), kMaxSignatureBytes);
    if (!signature.ok()) return signature.status();
    std::vector<std::string> signatures;
    if (*signature) signatures.push_back(**signature);

    auto signer = check_signatures_(**manifest, signatures);
    if (!signer.ok()) return signer.status().WithContext(base_url_);
    auto parsed = ParseBundleManifest(**manifest, limits_);
    if (!parsed.ok()) return parsed.status().WithContext(base_url_);

    plan_.files.assign(parsed->files().begin(), parsed->files().end());
    std::sort(plan_.files.begin(), plan_.files.end(),
              [](const ModelFile& a, const ModelFile& b) { return a.path() < b.path(); });
    plan_.signed_by = std::move(signer).value();
    plan_.description = "mirror:" + base_url_;
    for (const ModelFile& file : plan_.files) {
      const auto partial = RegularFileSize(PartPath(file));
      if (partial && *partial <= file.size_bytes()) plan_.partial_bytes += *partial;
    }
    return plan_;
  }

  void OnCommitted() override {
    for (const ModelFile& file : plan_.files) ::unlink(PartPath(file).c_str());
  }

  Status Transfer(Staging& staging) override {
    if (Status made = MakeDirectories(downloads_dir_); !made.ok()) return made;
    for (const ModelFile& file : plan_.files) {
      if (Status begun = staging.BeginFile(file.path()); !begun.ok()) return begun;
      auto linked = staging.LinkExisting(file);
      if (!linked.ok()) return linked.status();
      if (*linked) continue;
      if (Status downloaded = Download(file, staging); !downloaded.ok()) return downloaded;
    }
    return Status::Ok();
  }

 private:
  std::filesystem::path PartPath(const ModelFile& file) const {
    return downloads_dir_ / (file.sha256() + ".part");
  }

  std::string FileUrl(const ModelFile& file) const {
    std::string url = base_url_ + std::string(kBundleModelPrefix);
    size_t start = 0;
    const std::string& path = file.path();
    while (start <= path.size()) {
      const size_t slash = std::min(path.find('/', start), path.size());
      char* escaped =
          curl_easy_escape(curl_.get(), path.data() + start, static_cast<int>(slash - start));
      INFERBOX_CHECK(escaped != nullptr);
      url += escaped;
      curl_free(escaped);
      if (slash < path.size()) url += '/';
      start = slash + 1;
    }
    return url;
  }

  // Sets what every request of this install shares, and the callbacks' target.
  void Prepare(const std::string& url, Request& transfer) {
    CURL* handle = curl_.get();
    curl_easy_reset(handle);
    transfer.handle = handle;
    curl_easy_setopt(handle, CURLOPT_URL, url.c_str());
    curl_easy_setopt(handle, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(handle, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(handle, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(handle, CURLOPT_PROXY, options_.proxy.c_str());
    curl_easy_setopt(handle, CURLOPT_CONNECTTIMEOUT_MS,
                     static_cast<long>(options_.connect_timeout.count()));
    curl_easy_setopt(handle, CURLOPT_LOW_SPEED_LIMIT, kStallBytesPerSecond);
    curl_easy_setopt(handle, CURLOPT_LOW_SPEED_TIME,
                     static_cast<long>(options_.stall_timeout.count()));
    if (!options_.ca_file.empty())
      curl_easy_setopt(handle, CURLOPT_CAINFO, options_.ca_file.c_str());
    curl_easy_setopt(handle, CURLOPT_USERAGENT, user_agent_.c_str());
    curl_easy_setopt(handle, CURLOPT_HEADERFUNCTION, &OnHeader);
    curl_easy_setopt(handle, CURLOPT_HEADERDATA, &transfer);
    curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, &OnBody);
    curl_easy_setopt(handle, CURLOPT_WRITEDATA, &transfer);
  }

  // Runs the prepared request; the HTTP status, or why there is none.
  Result<long> Perform(const std::string& url, Request& transfer) {
    const CURLcode result = curl_easy_perform(curl_.get());
    if (!transfer.error.ok()) return transfer.error.WithContext(url);
    if (result != CURLE_OK) {
      return UnavailableError(fmt::format("cannot fetch {}: {}", url, curl_easy_strerror(result)));
    }
    long code = 0;
    curl_easy_getinfo(curl_.get(), CURLINFO_RESPONSE_CODE, &code);
    if (code >= 300 && code < 400) {
      return FailedPreconditionError(fmt::format(
          "{} redirects (HTTP {}); redirects are not followed: allow-list and use the final URL",
          url, code));
    }
    return code;
  }

  // A small file of the model's folder; nullopt when the mirror answers 404.
  Result<std::optional<std::string>> FetchSmall(const std::string& name, uint64_t max_bytes) {
    const std::string url = base_url_ + name;
    Request transfer;
    transfer.max_bytes = max_bytes;
    Prepare(url, transfer);
    auto code = Perform(url, transfer);
    if (!code.ok()) return code.status();
    if (*code == 404) return std::optional<std::string>();
    if (*code != 200) return UnavailableError(fmt::format("{} answered HTTP {}", url, *code));
    return std::optional<std::string>(std::move(transfer.body));
  }

  // Downloads `file` into its part (resuming it), checks it and links it into the staged
  // model. The part stays until the install commits, so that a later failure does not cost
  // the next try this file.
  Status Download(const ModelFile& file, Staging& staging) {
    const std::filesystem::path part_path = PartPath(file);
    UniqueFd fd(::open(part_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (!fd.valid()) return ErrnoStatus("cannot open", part_path, errno);
    // A part linked elsewhere too is another install's verified file, staged and not committed
    // yet: it is never written again (truncating or appending would change that install's file
    // under it). It has the digest this manifest names, so a manifest that gives it another
    // size is wrong, whatever the mirror serves.
    struct stat info {};
    if (::fstat(fd.get(), &info) == 0 && info.st_nlink > 1 &&
        static_cast<uint64_t>(info.st_size) != file.size_bytes()) {
      return InvalidArgumentError(
          fmt::format("the manifest gives {} {} bytes, but a verified file of sha256 {} has {}",
                      file.path(), file.size_bytes(), file.sha256(), info.st_size));
    }
    // Held on a descriptor of its own, so closing the part after writing keeps it.
    auto lock = FileLock::TryAcquire(part_path);
    if (!lock.ok()) return lock.status();
    auto part = HashingFileWriter::Resume(std::move(fd), part_path);
    if (!part.ok()) return part.status();
    if (part->size() > file.size_bytes()) {
      if (Status emptied = part->Truncate(); !emptied.ok()) return emptied;
    }

    const std::string url = FileUrl(file);
    if (part->size() == file.size_bytes()) {
      if (Status counted = staging.AddBytes(part->size()); !counted.ok()) return counted;
    } else if (Status fetched = Fetch(url, file, *part, staging); !fetched.ok()) {
      return fetched;
    }
    const uint64_t size = part->size();
    auto sha256 = part->Finish();
    if (!sha256.ok()) return sha256.status();
    if (Status checked = staging.FinishFile(file, size, *sha256); !checked.ok()) {
      ::unlink(part_path.c_str());  // Corrupt: the next try starts over.
      return checked.WithContext(url);
    }
    const std::filesystem::path staged = staging.PathOf(file.path());
    if (Status made = MakeDirectories(staged.parent_path()); !made.ok()) return made;
    if (::link(part_path.c_str(), staged.c_str()) != 0) {
      return ErrnoStatus("cannot link " + part_path.string() + " to", staged, errno);
    }
    return Status::Ok();
  }

  // Fetches the rest of `file` into `part`.
  Status Fetch(const std::string& url, const ModelFile& file, HashingFileWriter& part,
               Staging& staging) {
    Request transfer;
    transfer.file = &part;
    transfer.staging = &staging;
    transfer.resume_from = part.size();
    transfer.expected_size = file.size_bytes();
    Prepare(url, transfer);
    const std::string range = fmt::format("{}-", transfer.resume_from);
    if (transfer.resume_from > 0) curl_easy_setopt(curl_.get(), CURLOPT_RANGE, range.c_str());
    auto code = Perform(url, transfer);
    if (!code.ok()) {
      return Status(code.status().code(),
                    fmt::format("{} ({} of {} bytes kept; installing again resumes)",
                                code.status().message(), part.size(), file.size_bytes()));
    }
    if (*code == 404) {
      return NotFoundError(fmt::format("the mirror lacks {}, which its manifest lists", url));
    }
    if (*code != 200 && *code != 206) {
      return UnavailableError(fmt::format("{} answered HTTP {}", url, *code));
    }
    if (part.size() != file.size_bytes()) {
      return UnavailableError(fmt::format("{} ended after {} of {} bytes; installing again resumes",
                                          url, part.size(), file.size_bytes()));
    }
    return Status::Ok();
  }

  const MirrorSource source_;
  const MirrorOptions& options_;
  const StoreLimits& limits_;
  const SignatureCheck check_signatures_;
  const std::filesystem::path downloads_dir_;
  const std::string user_agent_ = fmt::format("inferbox/{}", kVersion);
  std::string base_url_;
  std::unique_ptr<CURL, CurlFree> curl_;
  SourcePlan plan_;
};

}  // namespace

std::unique_ptr<ModelSourceReader> MakeMirrorReader(const MirrorSource& source,
                                                    const MirrorOptions& options,
                                                    const StoreLimits& limits,
                                                    SignatureCheck check_signatures,
                                                    std::filesystem::path downloads_dir) {
  return std::make_unique<MirrorReader>(source, options, limits, std::move(check_signatures),
                                        std::move(downloads_dir));
}

}  // namespace inferbox::provisioning
