// Interprets the SENCACHE_CHECK rules of sencache_kernels/ops.def with its SENCACHE_MESSAGE templates. Mirrors
// sencache_kernels/checks.py field for field: dtypes print as torch.float32, shapes as [2, 8], devices as cuda:0, so
// the C++ extension and the Python fallback raise identical messages (tests compare them case by case).
#include "sencache/checks.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace sencache {
namespace {

enum class Kind {
#define SENCACHE_MESSAGE(kind, text) kind,
#include "sencache_kernels/ops.def"
};

const char* const kMessages[] = {
#define SENCACHE_MESSAGE(kind, text) text,
#include "sencache_kernels/ops.def"
};

struct RuleText {
  const char* op;
  Kind kind;
  const char* args;
  const char* other;
  const char* spec;
  const char* hint;
};

const RuleText kRules[] = {
#define SENCACHE_CHECK(op, kind, args, other, spec, hint) {#op, Kind::kind, args, other, spec, hint},
#include "sencache_kernels/ops.def"
};

using Fields = std::map<std::string, std::string>;

std::vector<std::string> words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// Replace every {name} of `text` with fields[name] (a name missing from the fields is a bug in the table).
std::string fill(const std::string& text, const Fields& fields) {
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t open = text.find('{', pos);
    const size_t close = open == std::string::npos ? open : text.find('}', open);
    if (close == std::string::npos) return out + text.substr(pos);
    out += text.substr(pos, open - pos);
    out += fields.at(text.substr(open + 1, close - open - 1));
    pos = close + 1;
  }
}

std::string dtype_name(at::ScalarType st) { return "torch." + std::string(c10::getDtypeNames(st).first); }

std::string shape_text(const at::Tensor& v) {
  std::ostringstream out;
  out << "[";
  const auto sizes = v.sym_sizes();
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << "]";
  return out.str();
}

// One rule, resolved against the op's schema.
struct Rule {
  Kind kind;
  std::vector<size_t> args;
  int other;  // -1: none
  std::vector<at::ScalarType> dtypes;
  int64_t lo = 0, hi = 0;
  Fields spec;  // spec, lo, hi as the messages show them
  std::string hint;
};

struct OpRules {
  std::string op;
  std::vector<std::string> names;
  std::vector<Rule> rules;
};

OpRules compile(const std::string& name) {
  const auto& schema = c10::Dispatcher::singleton().findSchemaOrThrow(("sencache::" + name).c_str(), "").schema();
  OpRules out{"sencache::" + name, {}, {}};
  for (const auto& a : schema.arguments()) out.names.push_back(a.name());
  auto index = [&](const std::string& arg) {
    const auto it = std::find(out.names.begin(), out.names.end(), arg);
    TORCH_CHECK(it != out.names.end(), "ops.def: ", out.op, " has no argument ", arg);
    return static_cast<size_t>(it - out.names.begin());
  };
  for (const RuleText& r : kRules) {
    if (name != r.op) continue;
    Rule rule{r.kind, {}, *r.other ? static_cast<int>(index(r.other)) : -1, {}, 0, 0, {}, r.hint};
    for (const auto& arg : words(r.args)) rule.args.push_back(index(arg));
    const auto spec = words(r.spec);
    std::string shown = r.spec, lo, hi;
    if (r.kind == Kind::DTYPE || r.kind == Kind::SCALAR) {
      shown.clear();
      for (size_t i = 0; i < spec.size(); ++i) {
        rule.dtypes.push_back(c10::getStringToDtypeMap().at(spec[i]));
        shown += (i == 0 ? "" : i + 1 == spec.size() ? " or " : ", ") + ("torch." + spec[i]);
      }
    } else if (r.kind == Kind::RANGE) {
      lo = spec.at(0);
      hi = spec.at(1);
      rule.lo = std::stoll(lo);
      rule.hi = std::stoll(hi);
    }
    rule.spec = {{"spec", shown}, {"lo", lo}, {"hi", hi}};
    out.rules.push_back(std::move(rule));
  }
  return out;
}

const OpRules& rules_of(const char* op) {
  // Resolved once per op, on its first call (its schema is registered by then).
  static const std::map<std::string, OpRules> table = [] {
    std::map<std::string, OpRules> t;
#define SENCACHE_OP(name, schema) t.emplace(#name, compile(#name));
#include "sencache_kernels/ops.def"
    return t;
  }();
  return table.at(op);
}

bool holds(const Rule& r, const c10::IValue& v, const c10::IValue& o) {
  switch (r.kind) {
    case Kind::HAS_BATCH:
      return v.toTensor().dim() >= 1;
    case Kind::NONEMPTY_BATCH:
      return v.toTensor().dim() >= 1 && v.toTensor().sym_size(0) >= 1;
    case Kind::DTYPE:
      return std::find(r.dtypes.begin(), r.dtypes.end(), v.toTensor().scalar_type()) != r.dtypes.end();
    case Kind::SCALAR:
      return v.toTensor().scalar_type() == r.dtypes.at(0) && v.toTensor().sym_numel() == 1;
    case Kind::PER_SAMPLE:
      return v.toTensor().dim() == 1 && v.toTensor().sym_size(0) == o.toTensor().sym_size(0);
    case Kind::SAME_DTYPE:
      return v.toTensor().scalar_type() == o.toTensor().scalar_type();
    case Kind::SAME_SHAPE:
      return v.toTensor().sym_sizes() == o.toTensor().sym_sizes();
    case Kind::SAME_DEVICE:
      return v.toTensor().device() == o.toTensor().device();
    case Kind::RANGE:
      return v.toInt() >= r.lo && v.toInt() <= r.hi;
    case Kind::NONZERO:
      return v.toInt() != 0;
    case Kind::UNDEFINED:
      break;
  }
  return false;
}

void describe(Fields& f, const std::string& prefix, const c10::IValue& v) {
  const bool tensor = v.isTensor() && v.toTensor().defined();
  f[prefix + "dtype"] = tensor ? dtype_name(v.toTensor().scalar_type()) : "";
  f[prefix + "shape"] = tensor ? shape_text(v.toTensor()) : "";
  f[prefix + "device"] = tensor ? v.toTensor().device().str() : "";
  if (prefix.empty()) f["value"] = v.isInt() ? std::to_string(v.toInt()) : "";
}

[[noreturn]] void fail(const OpRules& op, Kind kind, size_t arg, int other, const std::vector<c10::IValue>& values,
                       const Fields& spec, const std::string& hint) {
  const c10::IValue none;
  const c10::IValue& o = other < 0 ? none : values[other];
  Fields f = spec;
  f["op"] = op.op;
  f["arg"] = op.names[arg];
  f["other"] = other < 0 ? "" : op.names[other];
  describe(f, "", values[arg]);
  describe(f, "other_", o);
  std::ostringstream batch;
  if (o.isTensor() && o.toTensor().defined() && o.toTensor().dim() >= 1) batch << o.toTensor().sym_size(0);
  f["batch"] = batch.str();
  f["hint"] = hint.empty() ? "" : "; " + fill(hint, f);
  TORCH_CHECK_VALUE(false, fill(kMessages[static_cast<int>(kind)], f));
}

void check_defined(const OpRules& op, size_t i, const std::vector<c10::IValue>& values) {
  if (values[i].isTensor() && !values[i].toTensor().defined()) {
    fail(op, Kind::UNDEFINED, i, -1, values, {{"spec", ""}, {"lo", ""}, {"hi", ""}}, "");
  }
}

}  // namespace

void check_args(const char* op, std::initializer_list<c10::IValue> args) {
  const OpRules& rules = rules_of(op);
  const std::vector<c10::IValue> values(args);
  TORCH_CHECK(values.size() == rules.names.size(), rules.op, ": check_args got ", values.size(), " arguments");
  for (const Rule& r : rules.rules) {
    if (r.other >= 0) check_defined(rules, static_cast<size_t>(r.other), values);
    const c10::IValue none;
    const c10::IValue& o = r.other < 0 ? none : values[r.other];
    for (size_t i : r.args) {
      if (values[i].isNone()) continue;  // an absent optional tensor
      check_defined(rules, i, values);
      if (!holds(r, values[i], o)) fail(rules, r.kind, i, r.other, values, r.spec, r.hint);
    }
  }
}

}  // namespace sencache
