// A restricted unpickler for what torch.save writes for state dicts.
//
// It builds a tree of plain values and never calls anything: the only globals it
// accepts are collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// torch._utils._rebuild_parameter and the typed storage classes torch.*Storage;
// REDUCE on them is interpreted here (an empty ordered dict, a tensor description).
// Any other global (os.system, builtins.eval, ...) is refused with its name.
// Persistent ids must be ('storage', <storage class>, key, location, numel).
//
// Opcodes of protocols 2-5 that state dicts use are read; every length field is
// checked against the bytes left before anything is allocated, and the stack, the
// mark stack, the memo and the number of values are bounded.
#pragma once
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "io/dtype.h"

namespace kvrun::io::pickle {

enum class Kind { None, Bool, Int, Float, String, Bytes, List, Tuple, Dict, Global, Storage, Tensor };
const char* kind_name(Kind k);

struct Value {
  Kind kind = Kind::None;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;                                   // String, Bytes; Global: "module.name"
  std::vector<Value*> items;                       // List, Tuple
  std::vector<std::pair<Value*, Value*>> entries;  // Dict, in insertion order
  bool ordered = false;                            // Dict made by collections.OrderedDict
  // Storage (a persistent id): the element type, the archive key, the device, the element count.
  DType dtype = DType::F32;
  std::string key, location;
  int64_t numel = 0;
  // Tensor (_rebuild_tensor_v2): its storage (a Storage value), offset, size, stride (elements).
  const Value* storage = nullptr;
  int64_t storage_offset = 0;
  std::vector<int64_t> size, stride;

  // Dict lookup by string key; nullptr when absent or not a dict.
  const Value* get(const std::string& k) const;

 private:
  friend class Unpickler;
  std::map<std::string, size_t> str_keys_;
  std::map<int64_t, size_t> int_keys_;
};

struct Limits {
  size_t max_stack = 1u << 20;       // values on the stack
  size_t max_marks = 1u << 16;       // nested MARKs
  size_t max_memo = 1u << 20;        // memo entries
  size_t max_values = 1u << 24;      // values created
  size_t max_dict_items = 1u << 22;  // entries in one dict or list
};

// The unpickled tree; owns every value (cycles made by a hostile pickle are harmless).
class Document {
 public:
  const Value* root() const { return root_; }

 private:
  friend class Unpickler;
  std::deque<Value> values_;
  const Value* root_ = nullptr;
};

// Parses `size` bytes; `label` names the source in errors ("model.pt:archive/data.pkl").
// Throws kvrun::Error "<label>: pickle: <what> at byte <n>".
Document unpickle(const uint8_t* data, size_t size, const std::string& label, const Limits& limits = {});

}  // namespace kvrun::io::pickle
