// The C++/LibTorch twin of src/earlyad/train (model.py, data.py, trainer.py, metrics.py).
//
// It computes what the Python trainer computes, step for step:
//   - ClassifierCNN with the same module tree, so the state-dict keys are the same
//     (features.<block>.<layer>.*, classifier.<i>.*) and checkpoints move both ways;
//     built under torch::manual_seed(seed) in the same order as Python, LibTorch's CPU
//     generator (the same Mersenne Twister as Python's) gives bitwise the same initial weights.
//   - The tensor cache: float16 C-order .npy files memory-mapped as (X, Y, Z), exactly the
//     array numpy returns (the study's C++ read Z, Y, X: REFERENCE.md defect 5).
//   - Augmentation: the crop offsets, blur sigmas and epoch orders are NOT drawn here. numpy's
//     seeded generators (SeedSequence + PCG64) draw them in Python, and `earlyad plan-epochs`
//     writes them to a plan TSV that train_app reads; one source of randomness, so the two
//     implementations see the same samples in the same order. The margin-only Gaussian blur
//     (scipy's taps and 'reflect' border) is the same sequence of LibTorch shift-and-add ops
//     as data._blur_axis, so the two agree bitwise.
//   - Adam as torch.optim.Adam's single-tensor CPU path (lerp_ for the first moment), mean
//     cross-entropy, selection on validation macro-AUC (ties to the lower loss) or loss with
//     strict improvement and patience, and the same log.tsv / predictions_*.tsv columns and
//     model.pt keys.
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include "twin.hpp"

namespace fs = std::filesystem;

namespace earlyad {
namespace {

const std::array<std::string, 3> kClasses = {"CN", "MCI", "AD"};

[[noreturn]] void fail(const std::string& message) { throw std::runtime_error(message); }

// ----------------------------------------------------------------------------- text helpers

std::vector<std::string> split(const std::string& line, char sep) {
  std::vector<std::string> out;
  std::string field;
  std::istringstream in(line);
  while (std::getline(in, field, sep)) out.push_back(field);
  if (!line.empty() && line.back() == sep) out.emplace_back();
  return out;
}

int64_t parse_int(const std::string& text, const std::string& what) {
  int64_t value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size())
    fail(what + ": '" + text + "' is not an integer");
  return value;
}

double parse_double(const std::string& text, const std::string& what) {
  double value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size())
    fail(what + ": '" + text + "' is not a number");
  return value;
}

/// A float as pandas writes it: Python's repr (shortest round-trip), '' for NaN.
std::string format_double(double value) {
  if (std::isnan(value)) return "";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buf[64];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  std::string out(buf, ptr);
  if (out.find_first_of(".e") == std::string::npos) out += ".0";
  return out;
}

/// Write `text` to `path` through a temporary file and a rename (never half a file).
void atomic_write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path().empty() ? fs::path(".") : path.parent_path());
  fs::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) fail("cannot write " + tmp.string());
    out << text;
    if (!out.flush()) fail("cannot write " + tmp.string());
  }
  fs::rename(tmp, path);
}

std::vector<char> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string() + ": cannot open");
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// A TSV with a header row, as column name -> values.
struct Table {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;

  size_t column(const std::string& name, const fs::path& path) const {
    auto it = std::find(columns.begin(), columns.end(), name);
    if (it == columns.end()) fail(path.string() + ": lacks column '" + name + "'");
    return static_cast<size_t>(it - columns.begin());
  }
};

Table read_tsv(const fs::path& path) {
  std::ifstream in(path);
  if (!in) fail(path.string() + ": cannot open");
  Table table;
  std::string line;
  if (!std::getline(in, line)) fail(path.string() + ": empty file, expected a header row");
  table.columns = split(line, '\t');
  size_t n = 1;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    auto fields = split(line, '\t');
    if (fields.size() != table.columns.size())
      fail(path.string() + ": line " + std::to_string(n) + " has " +
           std::to_string(fields.size()) + " fields, the header " +
           std::to_string(table.columns.size()));
    table.rows.push_back(std::move(fields));
  }
  return table;
}

// ----------------------------------------------------------------------------- .npy volumes

/// A memory-mapped C-order .npy array: (X, Y, Z) exactly as numpy.load returns it.
torch::Tensor read_npy(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(path.string() + ": cached volume not found or unreadable");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail(path.string() + ": cannot stat");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* map = size ? ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
  ::close(fd);
  if (map == MAP_FAILED) fail(path.string() + ": cannot memory-map (empty file?)");
  auto unmap = [map, size](void*) { ::munmap(map, size); };
  const auto* bytes = static_cast<const unsigned char*>(map);
  auto bad = [&](const std::string& why) {
    ::munmap(map, size);
    fail(path.string() + ": unreadable .npy: " + why);
  };
  if (size < 10 || std::string(reinterpret_cast<const char*>(bytes), 6) != "\x93NUMPY")
    bad("no NUMPY magic");
  const int major = bytes[6];
  size_t header_len = 0, start = 0;
  if (major == 1) {
    header_len = bytes[8] | (bytes[9] << 8);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) bad("truncated header");
    header_len = bytes[8] | (bytes[9] << 8) | (bytes[10] << 16) | (size_t(bytes[11]) << 24);
    start = 12;
  } else {
    bad("format version " + std::to_string(major));
  }
  if (start + header_len > size) bad("truncated header");
  const std::string header(reinterpret_cast<const char*>(bytes) + start, header_len);
  auto value_of = [&](const std::string& key) {
    auto k = header.find("'" + key + "'");
    if (k == std::string::npos) bad("header lacks '" + key + "'");
    auto colon = header.find(':', k);
    return header.substr(colon + 1);
  };
  std::string descr = value_of("descr");
  descr = descr.substr(descr.find('\'') + 1);
  descr = descr.substr(0, descr.find('\''));
  torch::Dtype dtype;
  size_t item = 0;
  if (descr == "<f2") {
    dtype = torch::kHalf;
    item = 2;
  } else if (descr == "<f4") {
    dtype = torch::kFloat;
    item = 4;
  } else if (descr == "<f8") {
    dtype = torch::kDouble;
    item = 8;
  } else {
    bad("expected little-endian float16 voxels, got dtype '" + descr + "'");
  }
  if (value_of("fortran_order").find("False") != 0 &&
      value_of("fortran_order").find(" False") != 0)
    bad("Fortran-order arrays are not supported (the tensor cache writes C order)");
  std::string shape_text = value_of("shape");
  shape_text = shape_text.substr(shape_text.find('(') + 1);
  shape_text = shape_text.substr(0, shape_text.find(')'));
  std::vector<int64_t> shape;
  for (auto& part : split(shape_text, ',')) {
    auto first = part.find_first_not_of(' ');
    if (first == std::string::npos) continue;
    shape.push_back(parse_int(part.substr(first, part.find_last_not_of(' ') - first + 1),
                              path.string() + " shape"));
  }
  if (shape.size() != 3) bad("expected a 3D volume, got " + std::to_string(shape.size()) + "D");
  const size_t data_start = start + header_len;
  const size_t n = static_cast<size_t>(shape[0] * shape[1] * shape[2]);
  if (data_start + n * item > size) bad("file shorter than its shape");
  return torch::from_blob(const_cast<unsigned char*>(bytes + data_start), shape, unmap,
                          torch::TensorOptions().dtype(dtype));
}

// ----------------------------------------------------------------------------- the index

struct Scan {
  std::string participant_id, session_id, split;
  int64_t label = 0;
  fs::path path;
  torch::Tensor volume;  // (X, Y, Z), memory-mapped

  std::string describe() const {
    return participant_id + " " + session_id + " (" + path.string() + ")";
  }
};

/// The rows of one split of the tensor-cache index, in file order, volumes mapped and
/// validated (3D, at least `crop` per axis, finite), like data.CachedVolumes.
std::vector<Scan> read_split(const fs::path& index, const std::string& split_name,
                             int64_t crop) {
  Table table = read_tsv(index);
  const size_t c_pid = table.column("participant_id", index);
  const size_t c_ses = table.column("session_id", index);
  const size_t c_split = table.column("split", index);
  const size_t c_label = table.column("label", index);
  const size_t c_path = table.column("path", index);
  std::vector<Scan> out;
  for (const auto& row : table.rows) {
    if (row[c_split] != "train" && row[c_split] != "val" && row[c_split] != "test")
      fail(index.string() + ": unknown split value '" + row[c_split] + "'");
    if (row[c_split] != split_name) continue;
    Scan scan;
    scan.participant_id = row[c_pid];
    scan.session_id = row[c_ses];
    scan.split = row[c_split];
    scan.label = parse_int(row[c_label], index.string() + " label");
    fs::path p = row[c_path];
    scan.path = p.is_absolute() ? p : fs::current_path() / p;
    if (scan.label < 0 || scan.label >= static_cast<int64_t>(kClasses.size()))
      fail(index.string() + ": scan " + scan.describe() + " has label " +
           std::to_string(scan.label) + ", expected 0..2");
    scan.volume = read_npy(scan.path);
    for (int64_t ax = 0; ax < 3; ++ax)
      if (scan.volume.size(ax) < crop)
        fail("scan " + scan.describe() + ": volume is smaller than the " +
             std::to_string(crop) + "^3 crop along axis " + std::to_string(ax));
    if (!torch::isfinite(scan.volume).all().item<bool>())
      fail("scan " + scan.describe() + ": volume holds NaN/inf voxel(s)");
    out.push_back(std::move(scan));
  }
  return out;
}

// ----------------------------------------------------------------------------- crop and blur

using Offset = std::array<int64_t, 3>;

int64_t kernel_radius(double sigma, double truncate) {
  return sigma > 0 ? static_cast<int64_t>(truncate * sigma + 0.5) : 0;
}

/// scipy's normalized Gaussian taps (data.gaussian_kernel1d).
std::vector<double> gaussian_kernel1d(double sigma, int64_t radius) {
  std::vector<double> phi(2 * radius + 1);
  double sum = 0;
  for (int64_t x = -radius; x <= radius; ++x) {
    phi[x + radius] = std::exp(-0.5 / (sigma * sigma) * static_cast<double>(x * x));
  }
  for (double v : phi) sum += v;
  for (double& v : phi) v /= sum;
  return phi;
}

/// data._blur_axis: one 1D Gaussian pass along `axis` that keeps only the `crop` positions from
/// `start`, as 2r + 1 multiply-adds of shifted views with the same LibTorch ops in the same
/// order as Python, so both run the same ATen kernels and agree bitwise. Where the region stops
/// short of r voxels around the crop it ends at the volume's edge, and the missing voxels are
/// filled by scipy's 'reflect' rule (d c b a | a b c d).
torch::Tensor blur_axis(torch::Tensor x, int64_t axis, int64_t start, int64_t crop,
                        const std::vector<double>& w) {
  const int64_t r = static_cast<int64_t>(w.size() / 2);
  const int64_t n = x.size(axis);
  const int64_t pad_lo = std::max<int64_t>(0, r - start);
  const int64_t pad_hi = std::max<int64_t>(0, start + crop + r - n);
  if (pad_lo > 0 || pad_hi > 0) {
    std::vector<torch::Tensor> parts;
    if (pad_lo > 0) parts.push_back(x.narrow(axis, 0, pad_lo).flip({axis}));
    parts.push_back(x);
    if (pad_hi > 0) parts.push_back(x.narrow(axis, n - pad_hi, pad_hi).flip({axis}));
    x = torch::cat(parts, axis);
    start += pad_lo;
  }
  torch::Tensor out = x.narrow(axis, start, crop) * w[r];
  for (int64_t j = 1; j <= r; ++j) {
    out.add_(x.narrow(axis, start - j, crop), w[r - j]);
    out.add_(x.narrow(axis, start + j, crop), w[r + j]);
  }
  return out;
}

/// data.crop_and_blur: the crop^3 float32 sample at `offset`, blurred with `sigma` computed on
/// the crop plus a margin of one kernel radius (clipped at the volume border), axis by axis.
torch::Tensor crop_and_blur(const torch::Tensor& volume, const Offset& offset, double sigma,
                            int64_t crop, double truncate) {
  const int64_t r = kernel_radius(sigma, truncate);
  Offset lo{}, starts{};
  torch::Tensor region = volume;
  for (int64_t ax = 0; ax < 3; ++ax) {
    lo[ax] = std::max<int64_t>(0, offset[ax] - r);
    const int64_t hi = std::min<int64_t>(volume.size(ax), offset[ax] + crop + r);
    if (offset[ax] < 0 || offset[ax] + crop > volume.size(ax))
      fail("crop offset " + std::to_string(offset[ax]) + " along axis " + std::to_string(ax) +
           " does not fit a volume of size " + std::to_string(volume.size(ax)));
    region = region.slice(ax, lo[ax], hi);
    starts[ax] = offset[ax] - lo[ax];
  }
  region = region.to(torch::kFloat).contiguous();
  if (r == 0) {
    for (int64_t ax = 0; ax < 3; ++ax) region = region.narrow(ax, starts[ax], crop);
    return region.contiguous();
  }
  const auto taps = gaussian_kernel1d(sigma, r);
  for (int64_t ax = 0; ax < 3; ++ax) {
    region = blur_axis(region, ax, starts[ax], crop, taps);
  }
  return region.contiguous();
}

Offset centre_offset(const torch::Tensor& volume, int64_t crop) {
  return {(volume.size(0) - crop) / 2, (volume.size(1) - crop) / 2, (volume.size(2) - crop) / 2};
}

// ----------------------------------------------------------------------------- the model

struct ModelConfig {
  std::string norm_type = "instance";
  bool head_relu = true;
  std::string variant = "paper";
  double width = 1.0;
  int64_t input_size = 96;
  int64_t n_classes = 3;

  std::array<int64_t, 4> channels() const {
    std::array<int64_t, 4> out{};
    const std::array<double, 4> base{32, 256, 512, 512};
    // Python's round() rounds half to even, as nearbyint does in the default rounding mode
    for (size_t i = 0; i < 4; ++i)
      out[i] = std::max<int64_t>(1, static_cast<int64_t>(std::nearbyint(base[i] * width)));
    return out;
  }

  void check() const {
    if (norm_type != "instance" && norm_type != "batch")
      fail("norm_type must be 'instance' or 'batch', got '" + norm_type + "'");
    if (variant != "paper" && variant != "liu2022")
      fail("variant must be 'paper' or 'liu2022', got '" + variant + "'");
  }
};

/// model.PointwiseConv3d: block 1's 1->C, k=1 convolution as a broadcast multiply-add
/// (same parameters and initialisation as Conv3d, about 12x faster on CPU).
class PointwiseConv3dImpl : public torch::nn::Conv3dImpl {
 public:
  explicit PointwiseConv3dImpl(int64_t out_channels)
      : torch::nn::Conv3dImpl(torch::nn::Conv3dOptions(1, out_channels, 1)) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return torch::addcmul(bias.view({1, -1, 1, 1, 1}), x, weight.view({1, -1, 1, 1, 1}));
  }
};
TORCH_MODULE(PointwiseConv3d);

torch::nn::Sequential make_block(int64_t c_in, int64_t c_out, int64_t kernel, int64_t padding,
                                 int64_t dilation, const std::string& norm,
                                 std::optional<std::pair<int64_t, int64_t>> pool) {
  torch::nn::Sequential block;
  if (c_in == 1 && kernel == 1 && padding == 0) {
    block->push_back(PointwiseConv3d(c_out));
  } else {
    block->push_back(torch::nn::Conv3d(
        torch::nn::Conv3dOptions(c_in, c_out, kernel).padding(padding).dilation(dilation)));
  }
  if (norm == "instance") {
    block->push_back(torch::nn::InstanceNorm3d(torch::nn::InstanceNorm3dOptions(c_out)));
  } else {
    block->push_back(torch::nn::BatchNorm3d(torch::nn::BatchNorm3dOptions(c_out)));
  }
  block->push_back(torch::nn::ReLU(torch::nn::ReLUOptions().inplace(true)));
  if (pool)
    block->push_back(torch::nn::MaxPool3d(
        torch::nn::MaxPool3dOptions(pool->first).stride(pool->second)));
  return block;
}

/// model.ClassifierCNN, module for module (the same state-dict keys).
class ClassifierCNNImpl : public torch::nn::Module {
 public:
  explicit ClassifierCNNImpl(ModelConfig config) : config_(std::move(config)) {
    config_.check();
    const auto [c1, c2, c3, c4] = config_.channels();
    const bool liu = config_.variant == "liu2022";
    const auto& norm = config_.norm_type;
    using Pool = std::optional<std::pair<int64_t, int64_t>>;
    features_ = register_module("features", torch::nn::ModuleList());
    blocks_ = {
        make_block(1, c1, 1, 0, 1, norm, Pool({3, 2})),
        make_block(c1, c2, 3, 0, 2, norm, Pool({3, 2})),
        make_block(c2, c3, 5, 2, 2, norm, liu ? Pool({5, 2}) : Pool({3, 2})),
        make_block(c3, c4, 3, 1, 2, norm, liu ? Pool() : Pool({5, 2})),
    };
    for (auto& b : blocks_) features_->push_back(b);
    n_features_ = feature_count();
    classifier_ = register_module("classifier", torch::nn::Sequential());
    classifier_->push_back(torch::nn::Flatten());
    std::vector<torch::nn::Linear> linears = {torch::nn::Linear(n_features_, 1024),
                                              torch::nn::Linear(1024, 512)};
    classifier_->push_back(linears[0]);
    classifier_->push_back(linears[1]);
    if (config_.head_relu)
      classifier_->push_back(torch::nn::ReLU(torch::nn::ReLUOptions().inplace(true)));
    linears.push_back(torch::nn::Linear(512, config_.n_classes));
    classifier_->push_back(linears[2]);
    torch::NoGradGuard no_grad;
    for (auto& l : linears) {  // N(0, 0.01) weights, zero biases, as in the reference code
      torch::nn::init::normal_(l->weight, 0.0, 0.01);
      torch::nn::init::zeros_(l->bias);
    }
  }

  torch::Tensor features(torch::Tensor x) {
    for (auto& b : blocks_) x = b->forward(x);
    return x;
  }

  torch::Tensor forward(const torch::Tensor& x) { return classifier_->forward(features(x)); }

  const ModelConfig& config() const { return config_; }

 private:
  /// F for the configured input, from a forward pass of zeros in training mode, as Python
  /// does (which also moves BatchNorm's running statistics: kept for bitwise-equal buffers).
  int64_t feature_count() {
    torch::NoGradGuard no_grad;
    const int64_t s = config_.input_size;
    auto out = features(torch::zeros({1, 1, s, s, s}));
    if (out.numel() == 0)
      fail("input_size " + std::to_string(s) + " is too small for ClassifierCNN");
    return out.numel();
  }

  ModelConfig config_;
  torch::nn::ModuleList features_{nullptr};
  std::vector<torch::nn::Sequential> blocks_;
  torch::nn::Sequential classifier_{nullptr};
  int64_t n_features_ = 0;
};
TORCH_MODULE(ClassifierCNN);

// ----------------------------------------------------------------------------- checkpoints

using IDict = c10::impl::GenericDict;

IDict new_dict() { return IDict(c10::StringType::get(), c10::AnyType::get()); }

IDict state_dict(ClassifierCNN& model) {
  IDict out = new_dict();
  for (const auto& p : model->named_parameters(true))
    out.insert(p.key(), p.value().detach().to(torch::kCPU).clone());
  for (const auto& b : model->named_buffers(true))
    out.insert(b.key(), b.value().detach().to(torch::kCPU).clone());
  return out;
}

/// Copy a state dict into the model, strictly: every key present, none extra, same shapes.
void load_state_dict(ClassifierCNN& model, const IDict& state, const std::string& source) {
  torch::NoGradGuard no_grad;
  std::set<std::string> expected;
  auto copy_one = [&](const std::string& key, torch::Tensor& target) {
    expected.insert(key);
    auto it = state.find(key);
    if (it == state.end()) fail(source + ": state dict lacks '" + key + "'");
    const torch::Tensor value = it->value().toTensor();
    if (value.sizes() != target.sizes())
      fail(source + ": '" + key + "' has shape " + c10::str(value.sizes()) + ", the model " +
           c10::str(target.sizes()));
    target.copy_(value);
  };
  for (auto& p : model->named_parameters(true)) copy_one(p.key(), p.value());
  for (auto& b : model->named_buffers(true)) copy_one(b.key(), b.value());
  for (const auto& entry : state)
    if (!expected.count(entry.key().toStringRef()))
      fail(source + ": unexpected key '" + entry.key().toStringRef() + "' in the state dict");
}

IDict to_dict(const c10::IValue& value, const std::string& what) {
  if (!value.isGenericDict()) fail(what + " is not a dictionary");
  return value.toGenericDict();
}

c10::IValue dict_get(const IDict& d, const std::string& key, const std::string& source) {
  auto it = d.find(key);
  if (it == d.end()) fail(source + ": lacks key '" + key + "'");
  return it->value();
}

ModelConfig model_config_from(const IDict& d, const std::string& source) {
  ModelConfig c;
  c.norm_type = dict_get(d, "norm_type", source).toStringRef();
  c.head_relu = dict_get(d, "head_relu", source).toBool();
  c.variant = dict_get(d, "variant", source).toStringRef();
  const auto width = dict_get(d, "width", source);
  c.width = width.isDouble() ? width.toDouble() : static_cast<double>(width.toInt());
  c.input_size = dict_get(d, "input_size", source).toInt();
  c.n_classes = dict_get(d, "n_classes", source).toInt();
  c.check();
  return c;
}

IDict model_config_dict(const ModelConfig& c) {
  IDict d = new_dict();
  d.insert("norm_type", c.norm_type);
  d.insert("head_relu", c.head_relu);
  d.insert("variant", c.variant);
  d.insert("width", c.width);
  d.insert("input_size", c.input_size);
  d.insert("n_classes", c.n_classes);
  return d;
}

c10::IValue load_pickle(const fs::path& path) {
  try {
    return torch::pickle_load(read_bytes(path));
  } catch (const c10::Error& err) {
    fail(path.string() + ": not a torch.save file LibTorch can read: " + err.what_without_backtrace());
  }
}

/// torch.save's zip format, written so that Python's torch.load(weights_only=True) reads it:
/// torch::pickle_save tags dicts and lists with torch.jit._pickle.restore_type_tag, a global
/// the weights-only unpickler refuses, so the pickler runs here with tag_aggregates off.
void save_pickle(const c10::IValue& value, const fs::path& path) {
  std::vector<char> data;
  torch::jit::Pickler pickler([&](const char* bytes, size_t n) { data.insert(data.end(), bytes, bytes + n); },
                              nullptr, nullptr, nullptr, nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(value);
  pickler.stop();
  fs::create_directories(path.parent_path().empty() ? fs::path(".") : path.parent_path());
  fs::path tmp = path;
  tmp += ".tmp";
  {
    caffe2::serialize::PyTorchStreamWriter writer(tmp.string());
    size_t i = 0;
    for (const auto& tensor : pickler.tensorData()) {
      const auto w = torch::jit::getWriteableTensorData(tensor);
      writer.writeRecord("data/" + std::to_string(i++), w.data(), w.sizeInBytes());
    }
    writer.writeRecord("data.pkl", data.data(), data.size());
    writer.writeEndOfFile();
  }
  fs::rename(tmp, path);
}

/// A checkpoint with `model_config` and `state_dict` (model.pt of either implementation).
ClassifierCNN load_model(const fs::path& path) {
  IDict ckpt = to_dict(load_pickle(path), path.string());
  ModelConfig cfg = model_config_from(
      to_dict(dict_get(ckpt, "model_config", path.string()), path.string() + " model_config"),
      path.string() + " model_config");
  ClassifierCNN model(cfg);
  load_state_dict(model,
                  to_dict(dict_get(ckpt, "state_dict", path.string()), path.string() + " state_dict"),
                  path.string());
  return model;
}

// ----------------------------------------------------------------------------- metrics

int64_t argmax_row(const double* p, int64_t k) {
  int64_t best = 0;
  for (int64_t j = 1; j < k; ++j)
    if (p[j] > p[best]) best = j;
  return best;
}

/// One-vs-rest ROC AUC (the Mann-Whitney statistic with average ranks for ties, which is
/// the area roc_auc_score computes); NaN when the class has no positives or no negatives.
double binary_auc(const std::vector<int64_t>& positive, const std::vector<double>& score) {
  const size_t n = score.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return score[a] < score[b]; });
  std::vector<double> rank(n);
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && score[order[j + 1]] == score[order[i]]) ++j;
    const double avg = 0.5 * static_cast<double>(i + j) + 1.0;
    for (size_t k = i; k <= j; ++k) rank[order[k]] = avg;
    i = j + 1;
  }
  double n_pos = 0, rank_sum = 0;
  for (size_t i = 0; i < n; ++i)
    if (positive[i]) {
      n_pos += 1;
      rank_sum += rank[i];
    }
  const double n_neg = static_cast<double>(n) - n_pos;
  if (n_pos == 0 || n_neg == 0) return std::nan("");
  return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg);
}

/// metrics.classification_metrics: accuracy, balanced accuracy (mean recall over the classes
/// present in y_true) and macro-AUC (mean over the classes that have one), from probabilities.
std::map<std::string, double> classification_metrics(const std::vector<int64_t>& y,
                                                     const torch::Tensor& probs) {
  const double nan = std::nan("");
  const int64_t n = static_cast<int64_t>(y.size());
  if (n == 0) return {{"accuracy", nan}, {"balanced_accuracy", nan}, {"macro_auc", nan}};
  const int64_t k = probs.size(1);
  const double* p = probs.data_ptr<double>();
  std::vector<double> correct(k, 0), total(k, 0);
  double hits = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool ok = argmax_row(p + i * k, k) == y[i];
    hits += ok;
    total[y[i]] += 1;
    correct[y[i]] += ok;
  }
  double recall_sum = 0, present = 0;
  for (int64_t c = 0; c < k; ++c)
    if (total[c] > 0) {
      recall_sum += correct[c] / total[c];
      present += 1;
    }
  double auc_sum = 0, defined = 0;
  for (int64_t c = 0; c < k; ++c) {
    std::vector<int64_t> pos(n);
    std::vector<double> score(n);
    for (int64_t i = 0; i < n; ++i) {
      pos[i] = y[i] == c;
      score[i] = p[i * k + c];
    }
    const double auc = binary_auc(pos, score);
    if (!std::isnan(auc)) {
      auc_sum += auc;
      defined += 1;
    }
  }
  return {{"accuracy", hits / static_cast<double>(n)},
          {"balanced_accuracy", recall_sum / present},
          {"macro_auc", defined > 0 ? auc_sum / defined : nan}};
}

// ----------------------------------------------------------------------------- passes

struct EvalResult {
  double loss = std::nan("");
  torch::Tensor probs;  // (n, 3) float64
  std::vector<int64_t> labels;
};

torch::Tensor stack_samples(const std::vector<torch::Tensor>& samples) {
  return torch::stack(samples).unsqueeze(1);  // (B, 1, c, c, c)
}

/// trainer.evaluate: centre crops in row order, eval mode, summed cross-entropy / n.
EvalResult evaluate(ClassifierCNN& model, const std::vector<Scan>& scans, int64_t batch_size,
                    int64_t crop, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  model->eval();
  const int64_t n = static_cast<int64_t>(scans.size());
  EvalResult res;
  res.probs = torch::zeros({n, static_cast<int64_t>(kClasses.size())}, torch::kDouble);
  res.labels.resize(n);
  double total = 0;
  for (int64_t start = 0; start < n; start += batch_size) {
    const int64_t end = std::min(n, start + batch_size);
    std::vector<torch::Tensor> xs;
    std::vector<int64_t> ys;
    for (int64_t i = start; i < end; ++i) {
      xs.push_back(crop_and_blur(scans[i].volume, centre_offset(scans[i].volume, crop), 0.0, crop, 4.0));
      ys.push_back(scans[i].label);
      res.labels[i] = scans[i].label;
    }
    auto logits = model->forward(stack_samples(xs).to(device)).to(torch::kFloat);
    auto y = torch::tensor(ys, torch::kLong).to(device);
    total += torch::nn::functional::cross_entropy(
                 logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                 .item<double>();
    res.probs.slice(0, start, end).copy_(torch::softmax(logits, 1).to(torch::kDouble).cpu());
  }
  if (n) res.loss = total / static_cast<double>(n);
  return res;
}

/// torch.optim.Adam's single-tensor CPU update (no weight decay, no amsgrad), op for op:
/// exp_avg.lerp_, exp_avg_sq.mul_.addcmul_, denom = sqrt(v) / sqrt(bc2) + eps, addcdiv_.
class Adam {
 public:
  Adam(std::vector<torch::Tensor> params, double lr, double beta1, double beta2, double eps = 1e-8)
      : params_(std::move(params)), lr_(lr), beta1_(beta1), beta2_(beta2), eps_(eps) {
    for (auto& p : params_) {
      m_.push_back(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      v_.push_back(torch::zeros_like(p, torch::MemoryFormat::Preserve));
    }
  }

  void zero_grad() {
    for (auto& p : params_) p.mutable_grad() = torch::Tensor();  // set_to_none
  }

  void step() {
    torch::NoGradGuard no_grad;
    step_ += 1;
    const double bc1 = 1 - std::pow(beta1_, step_);
    const double bc2 = 1 - std::pow(beta2_, step_);
    const double step_size = lr_ / bc1;
    const double bc2_sqrt = std::pow(bc2, 0.5);
    for (size_t i = 0; i < params_.size(); ++i) {
      const auto& g = params_[i].grad();
      if (!g.defined()) continue;
      m_[i].lerp_(g, 1 - beta1_);
      v_[i].mul_(beta2_).addcmul_(g, g, 1 - beta2_);
      auto denom = (v_[i].sqrt() / bc2_sqrt).add_(eps_);
      params_[i].addcdiv_(m_[i], denom, -step_size);
    }
  }

  double lr() const { return lr_; }

 private:
  std::vector<torch::Tensor> params_, m_, v_;
  double lr_, beta1_, beta2_, eps_;
  double step_ = 0;
};

// ----------------------------------------------------------------------------- run settings

/// trainer.TrainConfig, read from the run file's `hyperparameters` mapping.
struct TrainConfig {
  int64_t epochs = 100, batch_size = 36, eval_batch_size = 36;
  double lr = 0.0018, beta1 = 0.9, beta2 = 0.999;
  int64_t patience = 20;
  std::string select_on = "auc";
  int64_t seed = 0;
  bool deterministic = false;
  std::optional<int64_t> threads;
  int64_t num_workers = 1;
  double blur_p = 0.5, blur_sigma_max = 1.5, blur_truncate = 4.0;
  int64_t crop = 96, train_eval_max = 0;
  std::string device = "auto";
  ModelConfig model;

  IDict to_dict() const {
    IDict d = new_dict();
    d.insert("epochs", epochs);
    d.insert("batch_size", batch_size);
    d.insert("eval_batch_size", eval_batch_size);
    d.insert("lr", lr);
    d.insert("betas", c10::ivalue::Tuple::create({beta1, beta2}));
    d.insert("patience", patience);
    d.insert("select_on", select_on);
    d.insert("seed", seed);
    d.insert("deterministic", deterministic);
    d.insert("threads", threads ? c10::IValue(*threads) : c10::IValue());
    d.insert("num_workers", num_workers);
    d.insert("blur_p", blur_p);
    d.insert("blur_sigma_max", blur_sigma_max);
    d.insert("blur_truncate", blur_truncate);
    d.insert("crop", crop);
    d.insert("train_eval_max", train_eval_max);
    d.insert("device", device);
    d.insert("width", model.width);
    d.insert("norm_type", model.norm_type);
    d.insert("head_relu", model.head_relu);
    d.insert("variant", model.variant);
    return d;
  }
};

TrainConfig train_config_from(const YAML::Node& hp, const std::string& source) {
  if (!hp || !hp.IsMap()) fail(source + ": 'hyperparameters' must be a mapping");
  TrainConfig c;
  const std::set<std::string> known = {
      "epochs", "batch_size", "eval_batch_size", "lr", "betas", "patience", "select_on",
      "seed", "deterministic", "threads", "num_workers", "blur_p", "blur_sigma_max",
      "blur_truncate", "crop", "train_eval_max", "device", "width", "norm_type", "head_relu",
      "variant"};
  for (const auto& kv : hp) {
    const auto key = kv.first.as<std::string>();
    if (!known.count(key)) fail(source + ": unknown training setting '" + key + "'");
  }
  try {
    auto get = [&](const char* key, auto& target) {
      if (hp[key]) target = hp[key].as<std::decay_t<decltype(target)>>();
    };
    get("epochs", c.epochs);
    get("batch_size", c.batch_size);
    get("eval_batch_size", c.eval_batch_size);
    get("lr", c.lr);
    if (hp["betas"]) {
      if (!hp["betas"].IsSequence() || hp["betas"].size() != 2)
        fail(source + ": 'betas' must be a list of two numbers");
      c.beta1 = hp["betas"][0].as<double>();
      c.beta2 = hp["betas"][1].as<double>();
    }
    get("patience", c.patience);
    get("select_on", c.select_on);
    get("seed", c.seed);
    get("deterministic", c.deterministic);
    if (hp["threads"] && !hp["threads"].IsNull()) c.threads = hp["threads"].as<int64_t>();
    get("num_workers", c.num_workers);
    get("blur_p", c.blur_p);
    get("blur_sigma_max", c.blur_sigma_max);
    get("blur_truncate", c.blur_truncate);
    get("crop", c.crop);
    get("train_eval_max", c.train_eval_max);
    get("device", c.device);
    get("width", c.model.width);
    get("norm_type", c.model.norm_type);
    get("head_relu", c.model.head_relu);
    get("variant", c.model.variant);
  } catch (const YAML::Exception& err) {
    fail(source + ": bad value in 'hyperparameters': " + err.what());
  }
  c.model.input_size = c.crop;
  c.model.n_classes = static_cast<int64_t>(kClasses.size());
  c.model.check();
  if (c.select_on != "auc" && c.select_on != "loss")
    fail(source + ": select_on must be 'auc' or 'loss', got '" + c.select_on + "'");
  if (c.device != "auto" && c.device != "cpu" && c.device != "cuda")
    fail(source + ": device must be 'auto', 'cpu' or 'cuda', got '" + c.device + "'");
  if (std::min({c.epochs, c.batch_size, c.eval_batch_size}) < 1)
    fail(source + ": epochs, batch_size and eval_batch_size must be >= 1");
  if (c.patience < 0) fail(source + ": patience must be >= 0");
  if (c.threads && *c.threads < 1) fail(source + ": threads must be >= 1 or null");
  return c;
}

torch::Device resolve_device(const std::string& choice, std::string& why) {
  const bool available = torch::cuda::is_available();
  if (choice == "cuda") {
    if (!available) fail("device='cuda' was requested but CUDA is not available to LibTorch");
    why = "device='cuda' requested";
    return torch::kCUDA;
  }
  if (choice == "cpu") {
    why = "device='cpu' requested";
    return torch::kCPU;
  }
  why = available ? "device='auto' and CUDA is available" : "device='auto' and CUDA is not available";
  return available ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
}

/// One training sample of the plan.
struct PlannedSample {
  int64_t row;
  Offset offset;
  double sigma;
};

/// The plan TSV of `earlyad plan-epochs`: epoch -> samples in their order.
std::map<int64_t, std::vector<PlannedSample>> read_plan(const fs::path& path, int64_t epochs,
                                                        const std::vector<Scan>& train,
                                                        int64_t crop) {
  Table t = read_tsv(path);
  const size_t c_epoch = t.column("epoch", path), c_pos = t.column("position", path),
               c_row = t.column("row", path), c_x = t.column("offset_x", path),
               c_y = t.column("offset_y", path), c_z = t.column("offset_z", path),
               c_sigma = t.column("sigma", path);
  std::map<int64_t, std::vector<PlannedSample>> plan;
  for (const auto& r : t.rows) {
    const int64_t epoch = parse_int(r[c_epoch], path.string() + " epoch");
    const int64_t pos = parse_int(r[c_pos], path.string() + " position");
    PlannedSample s{parse_int(r[c_row], path.string() + " row"),
                    {parse_int(r[c_x], path.string() + " offset_x"),
                     parse_int(r[c_y], path.string() + " offset_y"),
                     parse_int(r[c_z], path.string() + " offset_z")},
                    parse_double(r[c_sigma], path.string() + " sigma")};
    if (s.row < 0 || s.row >= static_cast<int64_t>(train.size()))
      fail(path.string() + ": epoch " + std::to_string(epoch) + " names training row " +
           std::to_string(s.row) + " but the index has " + std::to_string(train.size()) +
           " training scans; rerun `earlyad plan-epochs` on this index");
    auto& samples = plan[epoch];
    if (pos != static_cast<int64_t>(samples.size()))
      fail(path.string() + ": epoch " + std::to_string(epoch) + " positions are not 0, 1, ...");
    for (int64_t ax = 0; ax < 3; ++ax)
      if (s.offset[ax] < 0 || s.offset[ax] + crop > train[s.row].volume.size(ax))
        fail(path.string() + ": the crop of " + train[s.row].describe() + " in epoch " +
             std::to_string(epoch) + " does not fit the volume; rerun `earlyad plan-epochs`");
    samples.push_back(s);
  }
  for (int64_t e = 1; e <= epochs; ++e)
    if (!plan.count(e) || plan[e].size() != train.size())
      fail(path.string() + ": epoch " + std::to_string(e) + " is missing or does not list all " +
           std::to_string(train.size()) + " training scans; plan as many epochs as are trained");
  return plan;
}

void write_predictions(const fs::path& path, const std::vector<Scan>& scans, const EvalResult& r) {
  std::ostringstream out;
  out << "participant_id\tsession_id\ttrue_label\tpredicted_label";
  for (const auto& c : kClasses) out << "\tprob_" << c;
  out << "\n";
  const double* p = r.probs.data_ptr<double>();
  const int64_t k = r.probs.size(1);
  for (size_t i = 0; i < scans.size(); ++i) {
    out << scans[i].participant_id << "\t" << scans[i].session_id << "\t" << r.labels[i] << "\t"
        << argmax_row(p + i * k, k);
    for (int64_t j = 0; j < k; ++j) out << "\t" << format_double(p[i * k + j]);
    out << "\n";
  }
  atomic_write(path, out.str());
}

const std::vector<std::string> kLogColumns = {
    "epoch",         "train_loss",   "train_accuracy",          "train_balanced_accuracy",
    "train_macro_auc", "val_loss",   "val_accuracy",            "val_balanced_accuracy",
    "val_macro_auc", "lr",           "seconds",                 "samples_per_second"};

void write_log(const fs::path& path, const std::vector<std::map<std::string, double>>& rows) {
  std::ostringstream out;
  for (size_t i = 0; i < kLogColumns.size(); ++i) out << (i ? "\t" : "") << kLogColumns[i];
  out << "\n";
  for (const auto& row : rows) {
    for (size_t i = 0; i < kLogColumns.size(); ++i) {
      const double v = row.at(kLogColumns[i]);
      out << (i ? "\t" : "");
      if (kLogColumns[i] == "epoch")
        out << static_cast<int64_t>(v);
      else
        out << format_double(v);
    }
    out << "\n";
  }
  atomic_write(path, out.str());
}

void log_line(const std::string& message) { std::cerr << message << std::endl; }

std::string fixed(double v, int digits) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << v;
  return s.str();
}

/// trainer.Selection: strict improvement of val macro-AUC (higher) or val loss (lower); a tie
/// in macro-AUC goes to the lower val loss (coarse AUC steps on a small validation split); the
/// first epoch is always taken; a NaN score never beats a real one.
struct Selection {
  std::string select_on;
  int64_t patience = 0, best_epoch = 0, since_best = 0;
  double best_score = std::nan("");
  double best_loss = std::numeric_limits<double>::infinity();

  bool update(int64_t epoch, const std::map<std::string, double>& row) {
    const double score = select_on == "auc" ? row.at("val_macro_auc") : -row.at("val_loss");
    const double loss = row.at("val_loss");
    const bool tie_won = select_on == "auc" && score == best_score && loss < best_loss;
    const bool improved =
        best_epoch == 0 ||
        (!std::isnan(score) && (std::isnan(best_score) || score > best_score || tie_won));
    if (improved) {
      best_epoch = epoch;
      best_score = score;
      best_loss = loss;
      since_best = 0;
    } else {
      since_best += 1;
    }
    return improved;
  }
  bool should_stop() const { return patience > 0 && since_best >= patience; }
};

// ----------------------------------------------------------------------------- train_app

constexpr const char* kTrainUsage =
    "usage: train_app RUN.yaml\n"
    "\n"
    "Trains ClassifierCNN like earlyad.train.trainer.train. RUN.yaml holds:\n"
    "  index: the tensor-cache index TSV (relative scan paths are read from the cwd)\n"
    "  plan: the augmentation plan TSV of `earlyad plan-epochs` (epoch order, crops, sigmas)\n"
    "  out_dir: receives log.tsv, model.pt, predictions_val.tsv, predictions_test.tsv,\n"
    "           device.txt\n"
    "  train_eval_rows: training rows of the per-epoch train evaluation (seeded_subset)\n"
    "  init: optional model.pt to start from instead of the seeded initialisation\n"
    "  hyperparameters: the TrainConfig fields (epochs, batch_size, lr, betas, seed, ...)\n";

int run_training(const fs::path& run_file) {
  const auto t_start = std::chrono::steady_clock::now();
  YAML::Node run;
  try {
    run = YAML::LoadFile(run_file.string());
  } catch (const YAML::Exception& err) {
    fail(run_file.string() + ": not readable YAML: " + err.what());
  }
  for (const char* key : {"index", "plan", "out_dir", "train_eval_rows", "hyperparameters"})
    if (!run[key]) fail(run_file.string() + ": lacks key '" + std::string(key) + "'");
  const TrainConfig cfg = train_config_from(run["hyperparameters"], run_file.string());
  const fs::path index = run["index"].as<std::string>();
  const fs::path out_dir = run["out_dir"].as<std::string>();
  fs::create_directories(out_dir);

  if (cfg.threads) torch::set_num_threads(static_cast<int>(*cfg.threads));
  if (cfg.deterministic) at::globalContext().setDeterministicAlgorithms(true, false);
  std::string why;
  const torch::Device device = resolve_device(cfg.device, why);

  std::map<std::string, std::vector<Scan>> splits;
  for (const char* s : {"train", "val", "test"}) splits[s] = read_split(index, s, cfg.crop);
  if (splits["train"].empty() || splits["val"].empty())
    fail(index.string() + ": the train and val splits must not be empty");
  std::vector<Scan> train_eval;
  for (const auto& node : run["train_eval_rows"]) {
    const auto row = node.as<int64_t>();
    if (row < 0 || row >= static_cast<int64_t>(splits["train"].size()))
      fail(run_file.string() + ": train_eval_rows holds " + std::to_string(row) +
           ", outside the training split");
    train_eval.push_back(splits["train"][row]);
  }
  const auto plan = read_plan(run["plan"].as<std::string>(), cfg.epochs, splits["train"], cfg.crop);

  torch::manual_seed(static_cast<uint64_t>(cfg.seed));
  ClassifierCNN model(cfg.model);
  if (run["init"] && !run["init"].IsNull()) {
    const fs::path init = run["init"].as<std::string>();
    IDict ckpt = to_dict(load_pickle(init), init.string());
    load_state_dict(model, to_dict(dict_get(ckpt, "state_dict", init.string()), init.string()),
                    init.string());
    log_line("[train_app] initial weights from " + init.string());
  }
  model->to(device);
  Adam optimizer(model->parameters(), cfg.lr, cfg.beta1, cfg.beta2);

  log_line("[train_app] device " + device.str() + " (" + why + "); torch threads " +
           std::to_string(torch::get_num_threads()) + "; " +
           std::to_string(splits["train"].size()) + " train / " +
           std::to_string(splits["val"].size()) + " val / " +
           std::to_string(splits["test"].size()) + " test scans; train evaluated on " +
           std::to_string(train_eval.size()));
  {
    std::ostringstream d;
    d << "device\t" << device.str() << "\nreason\t" << why << "\ntorch\t" << TORCH_VERSION
      << " (LibTorch, C++ twin)\nthreads\t" << torch::get_num_threads()
      << "\nloader_workers\tnone (samples prepared in the training thread)\ndeterministic\t"
      << (cfg.deterministic ? "True" : "False") << "\nautocast\toff (float32)\n";
    atomic_write(out_dir / "device.txt", d.str());
  }

  Selection selection{cfg.select_on, cfg.patience};
  std::vector<std::map<std::string, double>> rows;
  IDict best_state = state_dict(model);
  bool stopped = false;
  const fs::path log_path = out_dir / "log.tsv";
  for (int64_t epoch = 1; epoch <= cfg.epochs && !stopped; ++epoch) {
    const auto t0 = std::chrono::steady_clock::now();
    model->train();
    const auto& samples = plan.at(epoch);
    int64_t seen = 0;
    for (size_t start = 0; start < samples.size(); start += cfg.batch_size) {
      const size_t end = std::min(samples.size(), start + static_cast<size_t>(cfg.batch_size));
      std::vector<torch::Tensor> xs;
      std::vector<int64_t> ys;
      for (size_t i = start; i < end; ++i) {
        const auto& s = samples[i];
        const auto& scan = splits["train"][s.row];
        xs.push_back(crop_and_blur(scan.volume, s.offset, s.sigma, cfg.crop, cfg.blur_truncate));
        ys.push_back(scan.label);
      }
      auto logits = model->forward(stack_samples(xs).to(device));
      auto loss = torch::nn::functional::cross_entropy(logits.to(torch::kFloat),
                                                       torch::tensor(ys, torch::kLong).to(device));
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      seen += static_cast<int64_t>(ys.size());
    }
    const double t_train =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::map<std::string, double> row{{"epoch", static_cast<double>(epoch)}};
    for (const auto& [name, scans] :
         {std::pair<std::string, const std::vector<Scan>*>{"train", &train_eval},
          std::pair<std::string, const std::vector<Scan>*>{"val", &splits["val"]}}) {
      auto res = evaluate(model, *scans, cfg.eval_batch_size, cfg.crop, device);
      row[name + "_loss"] = res.loss;
      for (const auto& [k, v] : classification_metrics(res.labels, res.probs)) row[name + "_" + k] = v;
    }
    row["lr"] = optimizer.lr();
    row["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    row["samples_per_second"] = t_train > 0 ? seen / t_train : std::nan("");
    rows.push_back(row);
    if (selection.update(epoch, row)) best_state = state_dict(model);
    stopped = selection.should_stop();
    write_log(log_path, rows);
    log_line("[train_app] epoch " + std::to_string(epoch) + "/" + std::to_string(cfg.epochs) +
             "  train loss " + fixed(row["train_loss"], 4) + " auc " +
             fixed(row["train_macro_auc"], 3) + " | val loss " + fixed(row["val_loss"], 4) +
             " auc " + fixed(row["val_macro_auc"], 3) + " bacc " +
             fixed(row["val_balanced_accuracy"], 3) + " | " + fixed(row["seconds"], 1) + " s, " +
             fixed(row["samples_per_second"], 2) + " samples/s" +
             (selection.best_epoch == epoch ? "  *best*" : ""));
    if (stopped) log_line("[train_app] early stop: no improvement in " + std::to_string(cfg.patience) + " epochs");
  }

  load_state_dict(model, best_state, "the best epoch's state");
  const auto& best_row = *std::find_if(rows.begin(), rows.end(), [&](const auto& r) {
    return static_cast<int64_t>(r.at("epoch")) == selection.best_epoch;
  });
  IDict val_metrics = new_dict();
  for (const auto& col : kLogColumns)
    if (col.rfind("val_", 0) == 0) val_metrics.insert(col, best_row.at(col));
  IDict ckpt = new_dict();
  ckpt.insert("state_dict", best_state);
  ckpt.insert("config", cfg.to_dict());
  ckpt.insert("model_config", model_config_dict(cfg.model));
  c10::List<std::string> classes;
  for (const auto& c : kClasses) classes.push_back(c);
  ckpt.insert("classes", classes);
  ckpt.insert("epoch", selection.best_epoch);
  ckpt.insert("select_on", cfg.select_on);
  ckpt.insert("val_metrics", val_metrics);
  ckpt.insert("implementation", std::string("cpp"));
  save_pickle(ckpt, out_dir / "model.pt");
  for (const char* s : {"val", "test"}) {
    auto res = evaluate(model, splits[s], cfg.eval_batch_size, cfg.crop, device);
    write_predictions(out_dir / (std::string("predictions_") + s + ".tsv"), splits[s], res);
  }
  const double total =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  log_line("[train_app] done: selected epoch " + std::to_string(selection.best_epoch) + " (val " +
           cfg.select_on + "), " + std::to_string(rows.size()) + " epochs, " + fixed(total, 1) +
           " s");
  return 0;
}

// ----------------------------------------------------------------------------- test_app

constexpr const char* kTestUsage =
    "usage:\n"
    "  test_app predict MODEL.pt INDEX.tsv SPLIT OUT.tsv [BATCH] [THREADS]\n"
    "      predictions of one split (centre crops), the columns of predictions_*.tsv\n"
    "  test_app forward MODEL.pt IN.pt OUT.pt [double]\n"
    "      logits of IN.pt's 'x' (eval mode) -> OUT.pt {'logits'}\n"
    "  test_app step MODEL.pt IN.pt OUT.pt LR BETA1 BETA2 [double]\n"
    "      one training step on IN.pt's 'x', 'y' (train mode) -> OUT.pt {'logits', 'loss',\n"
    "      'grads': {name: grad}, 'after': {name: parameter after one Adam step}}\n"
    "  test_app init MODEL_CONFIG.pt SEED OUT.pt\n"
    "      the seeded initial weights for the 'model_config' of the input -> OUT.pt model.pt\n"
    "  test_app read VOLUME.npy OUT.pt\n"
    "      the volume as read (float32, X, Y, Z) -> OUT.pt {'volume'}\n"
    "  test_app sample VOLUME.npy OX OY OZ SIGMA CROP TRUNCATE OUT.pt\n"
    "      crop_and_blur of the volume -> OUT.pt {'sample'}\n";

/// Python's Module.double(): floating parameters and buffers only (LibTorch's Module::to(dtype)
/// would also turn BatchNorm's integer num_batches_tracked into a double).
void to_double(ClassifierCNN& model) {
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) p.set_data(p.to(torch::kDouble));
  for (auto& b : model->buffers())
    if (b.is_floating_point()) b.set_data(b.to(torch::kDouble));
}

torch::Tensor input_tensor(const fs::path& path, const std::string& key) {
  IDict in = to_dict(load_pickle(path), path.string());
  return dict_get(in, key, path.string()).toTensor();
}

IDict named(const std::vector<std::pair<std::string, torch::Tensor>>& items) {
  IDict d = new_dict();
  for (const auto& [k, v] : items) d.insert(k, v);
  return d;
}

int run_test_app(const std::vector<std::string>& a) {
  if (a.empty()) fail(kTestUsage);
  const std::string& cmd = a[0];
  auto need = [&](size_t lo, size_t hi) {
    if (a.size() < lo || a.size() > hi) fail(std::string("wrong arguments\n") + kTestUsage);
  };
  if (cmd == "predict") {
    need(5, 7);
    if (a.size() > 6) torch::set_num_threads(static_cast<int>(parse_int(a[6], "THREADS")));
    ClassifierCNN model = load_model(a[1]);
    const int64_t crop = model->config().input_size;
    auto scans = read_split(a[2], a[3], crop);
    const int64_t batch = a.size() > 5 ? parse_int(a[5], "BATCH") : 8;
    write_predictions(a[4], scans, evaluate(model, scans, batch, crop, torch::kCPU));
    return 0;
  }
  if (cmd == "forward") {
    need(4, 5);
    ClassifierCNN model = load_model(a[1]);
    const bool dbl = a.size() > 4 && a[4] == "double";
    if (dbl) to_double(model);
    model->eval();
    torch::NoGradGuard no_grad;
    auto x = input_tensor(a[2], "x").to(dbl ? torch::kDouble : torch::kFloat);
    save_pickle(named({{"logits", model->forward(x)}}), a[3]);
    return 0;
  }
  if (cmd == "step") {
    need(7, 8);
    ClassifierCNN model = load_model(a[1]);
    const bool dbl = a.size() > 7 && a[7] == "double";
    if (dbl) to_double(model);
    model->train();
    auto x = input_tensor(a[2], "x").to(dbl ? torch::kDouble : torch::kFloat);
    auto y = input_tensor(a[2], "y").to(torch::kLong);
    Adam optimizer(model->parameters(), parse_double(a[4], "LR"), parse_double(a[5], "BETA1"),
                   parse_double(a[6], "BETA2"));
    auto logits = model->forward(x);
    auto loss = torch::nn::functional::cross_entropy(logits, y);
    optimizer.zero_grad();
    loss.backward();
    IDict grads = new_dict();
    for (const auto& p : model->named_parameters(true)) grads.insert(p.key(), p.value().grad().clone());
    optimizer.step();
    IDict out = new_dict();
    out.insert("logits", logits.detach());
    out.insert("loss", loss.detach());
    out.insert("grads", grads);
    out.insert("after", state_dict(model));
    save_pickle(out, a[3]);
    return 0;
  }
  if (cmd == "init") {
    need(4, 4);
    IDict in = to_dict(load_pickle(a[1]), a[1]);
    ModelConfig cfg = model_config_from(to_dict(dict_get(in, "model_config", a[1]), a[1]), a[1]);
    torch::manual_seed(static_cast<uint64_t>(parse_int(a[2], "SEED")));
    ClassifierCNN model(cfg);
    IDict out = new_dict();
    out.insert("state_dict", state_dict(model));
    out.insert("model_config", model_config_dict(cfg));
    save_pickle(out, a[3]);
    return 0;
  }
  if (cmd == "read") {
    need(3, 3);
    save_pickle(named({{"volume", read_npy(a[1]).to(torch::kFloat).clone()}}), a[2]);
    return 0;
  }
  if (cmd == "sample") {
    need(9, 9);
    auto vol = read_npy(a[1]);
    Offset off{parse_int(a[2], "OX"), parse_int(a[3], "OY"), parse_int(a[4], "OZ")};
    auto s = crop_and_blur(vol, off, parse_double(a[5], "SIGMA"), parse_int(a[6], "CROP"),
                           parse_double(a[7], "TRUNCATE"));
    save_pickle(named({{"sample", s}}), a[8]);
    return 0;
  }
  fail("unknown command '" + cmd + "'\n" + kTestUsage);
}

template <typename F>
int guarded(const char* app, F&& body) {
  try {
    return body();
  } catch (const c10::Error& err) {
    std::cerr << app << ": error: " << err.what_without_backtrace() << std::endl;
  } catch (const std::exception& err) {
    std::cerr << app << ": error: " << err.what() << std::endl;
  }
  return 1;
}

}  // namespace

int train_main(int argc, char** argv) {
  if (argc != 2 || std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help") {
    std::cerr << kTrainUsage;
    return argc == 2 ? 0 : 2;
  }
  return guarded("train_app", [&] { return run_training(argv[1]); });
}

int test_main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::cerr << kTestUsage;
    return args.empty() ? 2 : 0;
  }
  return guarded("test_app", [&] { return run_test_app(args); });
}

}  // namespace earlyad
