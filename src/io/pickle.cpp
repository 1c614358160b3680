#include "io/pickle.h"

#include <bit>
#include <cstring>
#include <unordered_map>

#include "kvrun/error.h"

namespace kvrun::io::pickle {

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None:
      return "None";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
      return "int";
    case Kind::Float:
      return "float";
    case Kind::String:
      return "str";
    case Kind::Bytes:
      return "bytes";
    case Kind::List:
      return "list";
    case Kind::Tuple:
      return "tuple";
    case Kind::Dict:
      return "dict";
    case Kind::Global:
      return "global";
    case Kind::Storage:
      return "storage";
    case Kind::Tensor:
      return "tensor";
  }
  return "?";
}

const Value* Value::get(const std::string& k) const {
  if (kind != Kind::Dict) return nullptr;
  auto it = str_keys_.find(k);
  return it == str_keys_.end() ? nullptr : entries[it->second].second;
}

namespace {

// The globals a state dict may name. Storage classes map to their element type.
struct Allowed {
  const char* module;
  const char* name;
  bool storage;
  DType dtype;
};
constexpr Allowed kAllowed[] = {
    {"collections", "OrderedDict", false, DType::F32},
    {"torch._utils", "_rebuild_tensor_v2", false, DType::F32},
    {"torch._utils", "_rebuild_parameter", false, DType::F32},
    {"torch", "FloatStorage", true, DType::F32},
    {"torch", "HalfStorage", true, DType::F16},
    {"torch", "BFloat16Storage", true, DType::BF16},
    {"torch", "DoubleStorage", true, DType::F64},
    {"torch", "LongStorage", true, DType::I64},
    {"torch", "IntStorage", true, DType::I32},
    {"torch", "ShortStorage", true, DType::I16},
    {"torch", "CharStorage", true, DType::I8},
    {"torch", "ByteStorage", true, DType::U8},
    {"torch", "BoolStorage", true, DType::BOOL},
};

std::string printable(const std::string& s) {
  std::string out;
  for (char c : s.substr(0, 200)) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) {
      out += c;
    } else {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[u >> 4];
      out += hex[u & 15];
    }
  }
  if (s.size() > 200) out += "...";
  return out;
}

}  // namespace

class Unpickler {
 public:
  Unpickler(const uint8_t* data, size_t size, const std::string& label, const Limits& limits)
      : p_(data), n_(size), label_(label), lim_(limits) {}

  Document run() {
    Document doc;
    doc_ = &doc;
    while (true) {
      if (pos_ >= n_) fail("truncated pickle: no STOP opcode before the end of the data");
      op_pos_ = pos_;
      const uint8_t op = p_[pos_++];
      if (step(op)) break;
    }
    if (stack_.size() != 1)
      fail("STOP with " + std::to_string(stack_.size()) + " values on the stack, expected exactly 1");
    if (!marks_.empty()) fail("STOP with an unclosed MARK");
    doc.root_ = stack_.back();
    return doc;
  }

 private:
  [[noreturn]] void fail(const std::string& msg) const {
    throw Error(label_ + ": pickle: " + msg + " at byte " + std::to_string(op_pos_));
  }

  // ---- raw reads, each checked against the bytes left
  const uint8_t* take(uint64_t len) {
    if (len > n_ - pos_)
      fail("truncated pickle: an argument of " + std::to_string(len) + " bytes but only " + std::to_string(n_ - pos_) +
           " remain");
    const uint8_t* at = p_ + pos_;
    pos_ += static_cast<size_t>(len);
    return at;
  }
  uint64_t le(int bytes) {
    const uint8_t* b = take(static_cast<uint64_t>(bytes));
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | b[i];
    return v;
  }
  std::string line() {
    const void* nl = std::memchr(p_ + pos_, '\n', n_ - pos_);
    if (!nl) fail("truncated pickle: GLOBAL argument without a newline");
    const size_t len = static_cast<size_t>(static_cast<const uint8_t*>(nl) - (p_ + pos_));
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len + 1;
    return s;
  }

  // ---- values and the stack
  Value* make(Kind k) {
    if (doc_->values_.size() >= lim_.max_values)
      fail("more than " + std::to_string(lim_.max_values) + " values (limit)");
    doc_->values_.emplace_back();
    doc_->values_.back().kind = k;
    return &doc_->values_.back();
  }
  void push(Value* v) {
    if (stack_.size() >= lim_.max_stack) fail("stack deeper than " + std::to_string(lim_.max_stack) + " (limit)");
    stack_.push_back(v);
  }
  Value* pop() {
    if (stack_.size() <= floor()) fail("stack underflow");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() {
    if (stack_.size() <= floor()) fail("stack underflow");
    return stack_.back();
  }
  // Values above the innermost MARK may be popped by ordinary opcodes; those below may not.
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  std::vector<Value*> pop_mark() {
    if (marks_.empty()) fail("no MARK to pop to");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Value*> out(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return out;
  }
  Value* tuple(std::vector<Value*> items) {
    Value* t = make(Kind::Tuple);
    t->items = std::move(items);
    return t;
  }

  void memo_put(uint64_t idx, Value* v) {
    if (memo_.size() >= lim_.max_memo && !memo_.count(idx))
      fail("memo larger than " + std::to_string(lim_.max_memo) + " entries (limit)");
    memo_[idx] = v;
  }
  Value* memo_get(uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) fail("memo entry " + std::to_string(idx) + " read before it was written");
    return it->second;
  }

  void set_item(Value* d, Value* k, Value* v) {
    if (d->kind != Kind::Dict) fail(std::string("SETITEM on a ") + kind_name(d->kind) + ", expected a dict");
    if (d->entries.size() >= lim_.max_dict_items)
      fail("dict with more than " + std::to_string(lim_.max_dict_items) + " entries (limit)");
    if (k->kind == Kind::String) {
      auto [it, fresh] = d->str_keys_.emplace(k->s, d->entries.size());
      if (!fresh) {
        d->entries[it->second].second = v;
        return;
      }
    } else if (k->kind == Kind::Int) {
      auto [it, fresh] = d->int_keys_.emplace(k->i, d->entries.size());
      if (!fresh) {
        d->entries[it->second].second = v;
        return;
      }
    } else {
      fail(std::string("dict key of type ") + kind_name(k->kind) + ", expected str or int");
    }
    d->entries.emplace_back(k, v);
  }
  void append(Value* l, Value* v) {
    if (l->kind != Kind::List) fail(std::string("APPEND to a ") + kind_name(l->kind) + ", expected a list");
    if (l->items.size() >= lim_.max_dict_items)
      fail("list with more than " + std::to_string(lim_.max_dict_items) + " items (limit)");
    l->items.push_back(v);
  }

  Value* global(const std::string& module, const std::string& name) {
    for (const Allowed& a : kAllowed) {
      if (module == a.module && name == a.name) {
        Value* g = make(Kind::Global);
        g->s = module + "." + name;
        g->b = a.storage;
        g->dtype = a.dtype;
        return g;
      }
    }
    fail("refused global '" + printable(module + "." + name) +
         "': a checkpoint may hold only dicts, lists, tuples, strings, numbers, booleans, None and tensors "
         "(collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, "
         "torch.*Storage); nothing was executed");
  }

  int64_t as_int(const Value* v, const char* what) {
    if (v->kind != Kind::Int) fail(std::string(what) + ": expected an int, found " + kind_name(v->kind));
    return v->i;
  }
  std::vector<int64_t> as_ints(const Value* v, const char* what) {
    if (v->kind != Kind::Tuple && v->kind != Kind::List)
      fail(std::string(what) + ": expected a tuple of ints, found " + kind_name(v->kind));
    std::vector<int64_t> out;
    out.reserve(v->items.size());
    for (const Value* x : v->items) out.push_back(as_int(x, what));
    return out;
  }

  Value* persistent_load(Value* pid) {
    if (pid->kind != Kind::Tuple || pid->items.size() != 5 || pid->items[0]->kind != Kind::String ||
        pid->items[0]->s != "storage")
      fail("persistent id: expected ('storage', storage class, key, location, numel)");
    const Value* cls = pid->items[1];
    if (cls->kind != Kind::Global || !cls->b)
      fail(std::string("persistent id: expected a torch.*Storage class, found ") +
           (cls->kind == Kind::Global ? "'" + cls->s + "'" : std::string(kind_name(cls->kind))));
    if (pid->items[2]->kind != Kind::String) fail("persistent id: storage key must be a string");
    if (pid->items[3]->kind != Kind::String) fail("persistent id: storage location must be a string");
    Value* s = make(Kind::Storage);
    s->dtype = cls->dtype;
    s->key = pid->items[2]->s;
    s->location = pid->items[3]->s;
    s->numel = as_int(pid->items[4], "persistent id numel");
    if (s->numel < 0) fail("persistent id: negative storage size " + std::to_string(s->numel));
    return s;
  }

  Value* reduce(Value* fn, Value* args) {
    if (fn->kind != Kind::Global || fn->b)
      fail(std::string("REDUCE on a ") + (fn->kind == Kind::Global ? "'" + fn->s + "'" : kind_name(fn->kind)) +
           ", expected an allowed callable");
    if (args->kind != Kind::Tuple)
      fail(std::string("REDUCE arguments: expected a tuple, found ") + kind_name(args->kind));
    const auto& a = args->items;
    if (fn->s == "collections.OrderedDict") {
      if (!a.empty()) fail("collections.OrderedDict: expected no arguments");
      Value* d = make(Kind::Dict);
      d->ordered = true;
      return d;
    }
    if (fn->s == "torch._utils._rebuild_tensor_v2") {
      // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
      if (a.size() != 6 && a.size() != 7)
        fail("_rebuild_tensor_v2: expected 6 or 7 arguments, found " + std::to_string(a.size()));
      if (a[0]->kind != Kind::Storage)
        fail(std::string("_rebuild_tensor_v2: expected a storage, found ") + kind_name(a[0]->kind));
      Value* t = make(Kind::Tensor);
      t->storage = a[0];
      t->dtype = a[0]->dtype;
      t->storage_offset = as_int(a[1], "_rebuild_tensor_v2 storage_offset");
      t->size = as_ints(a[2], "_rebuild_tensor_v2 size");
      t->stride = as_ints(a[3], "_rebuild_tensor_v2 stride");
      if (t->size.size() != t->stride.size())
        fail("_rebuild_tensor_v2: size has " + std::to_string(t->size.size()) + " dimensions but stride " +
             std::to_string(t->stride.size()));
      return t;
    }
    if (fn->s == "torch._utils._rebuild_parameter") {
      // (data, requires_grad, backward_hooks)
      if (a.size() != 3) fail("_rebuild_parameter: expected 3 arguments, found " + std::to_string(a.size()));
      if (a[0]->kind != Kind::Tensor)
        fail(std::string("_rebuild_parameter: expected a tensor, found ") + kind_name(a[0]->kind));
      return a[0];
    }
    fail("REDUCE on '" + fn->s + "' is not supported");
  }

  Value* text(Kind k, uint64_t len) {
    const uint8_t* b = take(len);
    Value* v = make(k);
    v->s.assign(reinterpret_cast<const char*>(b), static_cast<size_t>(len));
    return v;
  }
  Value* integer(int64_t x) {
    Value* v = make(Kind::Int);
    v->i = x;
    return v;
  }
  Value* long_le(uint64_t len) {
    if (len > 8) fail("integer of " + std::to_string(len) + " bytes, expected at most 8 (int64)");
    const uint8_t* b = take(len);
    uint64_t u = 0;
    for (uint64_t k = len; k-- > 0;) u = (u << 8) | b[k];
    if (len > 0 && len < 8 && (b[len - 1] & 0x80)) u |= ~0ull << (8 * len);  // sign-extend
    return integer(static_cast<int64_t>(u));
  }

  // One opcode; true at STOP.
  bool step(uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        const uint64_t v = le(1);
        if (v > 5) fail("pickle protocol " + std::to_string(v) + ", expected 2 to 5");
        return false;
      }
      case 0x95:  // FRAME: an 8-byte length; frames are not needed to read the stream
        le(8);
        return false;
      case '.':  // STOP
        return true;
      case '(':  // MARK
        if (marks_.size() >= lim_.max_marks) fail("more than " + std::to_string(lim_.max_marks) + " nested MARKs");
        marks_.push_back(stack_.size());
        return false;
      case '0':  // POP
        pop();
        return false;
      case '1':  // POP_MARK
        pop_mark();
        return false;
      case '2':  // DUP
        push(top());
        return false;
      case '}':  // EMPTY_DICT
        push(make(Kind::Dict));
        return false;
      case ']':  // EMPTY_LIST
        push(make(Kind::List));
        return false;
      case ')':  // EMPTY_TUPLE
        push(make(Kind::Tuple));
        return false;
      case 't':  // TUPLE
        push(tuple(pop_mark()));
        return false;
      case 0x85:    // TUPLE1
      case 0x86:    // TUPLE2
      case 0x87: {  // TUPLE3
        const size_t k = static_cast<size_t>(op - 0x84);
        if (stack_.size() < floor() + k) fail("stack underflow");
        std::vector<Value*> items(stack_.end() - static_cast<std::ptrdiff_t>(k), stack_.end());
        stack_.resize(stack_.size() - k);
        push(tuple(std::move(items)));
        return false;
      }
      case 'l': {  // LIST
        Value* l = make(Kind::List);
        for (Value* v : pop_mark()) append(l, v);
        push(l);
        return false;
      }
      case 'd': {  // DICT
        std::vector<Value*> kv = pop_mark();
        if (kv.size() % 2) fail("DICT with an odd number of items");
        Value* d = make(Kind::Dict);
        for (size_t k = 0; k < kv.size(); k += 2) set_item(d, kv[k], kv[k + 1]);
        push(d);
        return false;
      }
      case 'X':  // BINUNICODE
        push(text(Kind::String, le(4)));
        return false;
      case 0x8c:  // SHORT_BINUNICODE
        push(text(Kind::String, le(1)));
        return false;
      case 0x8d:  // BINUNICODE8
        push(text(Kind::String, le(8)));
        return false;
      case 'B':  // BINBYTES
        push(text(Kind::Bytes, le(4)));
        return false;
      case 'C':  // SHORT_BINBYTES
        push(text(Kind::Bytes, le(1)));
        return false;
      case 0x8e:  // BINBYTES8
        push(text(Kind::Bytes, le(8)));
        return false;
      case 'J':  // BININT
        push(integer(static_cast<int32_t>(static_cast<uint32_t>(le(4)))));
        return false;
      case 'K':  // BININT1
        push(integer(static_cast<int64_t>(le(1))));
        return false;
      case 'M':  // BININT2
        push(integer(static_cast<int64_t>(le(2))));
        return false;
      case 0x8a:  // LONG1
        push(long_le(le(1)));
        return false;
      case 0x8b:  // LONG4
        push(long_le(le(4)));
        return false;
      case 'G': {  // BINFLOAT, big-endian
        const uint8_t* b = take(8);
        uint64_t u = 0;
        for (int k = 0; k < 8; ++k) u = (u << 8) | b[k];
        Value* v = make(Kind::Float);
        v->f = std::bit_cast<double>(u);
        push(v);
        return false;
      }
      case 0x88:    // NEWTRUE
      case 0x89: {  // NEWFALSE
        Value* v = make(Kind::Bool);
        v->b = op == 0x88;
        push(v);
        return false;
      }
      case 'N':  // NONE
        push(make(Kind::None));
        return false;
      case 's': {  // SETITEM
        Value* v = pop();
        Value* k = pop();
        set_item(top(), k, v);
        return false;
      }
      case 'u': {  // SETITEMS
        std::vector<Value*> kv = pop_mark();
        if (kv.size() % 2) fail("SETITEMS with an odd number of items");
        Value* d = top();
        for (size_t k = 0; k < kv.size(); k += 2) set_item(d, kv[k], kv[k + 1]);
        return false;
      }
      case 'a': {  // APPEND
        Value* v = pop();
        append(top(), v);
        return false;
      }
      case 'e': {  // APPENDS
        std::vector<Value*> vs = pop_mark();
        Value* l = top();
        for (Value* v : vs) append(l, v);
        return false;
      }
      case 'q':  // BINPUT
        memo_put(le(1), top());
        return false;
      case 'r':  // LONG_BINPUT
        memo_put(le(4), top());
        return false;
      case 0x94:  // MEMOIZE
        memo_put(memo_.size(), top());
        return false;
      case 'h':  // BINGET
        push(memo_get(le(1)));
        return false;
      case 'j':  // LONG_BINGET
        push(memo_get(le(4)));
        return false;
      case 'c': {  // GLOBAL "module\nname\n"
        const std::string module = line();
        const std::string name = line();
        push(global(module, name));
        return false;
      }
      case 0x93: {  // STACK_GLOBAL
        Value* name = pop();
        Value* module = pop();
        if (module->kind != Kind::String || name->kind != Kind::String) fail("STACK_GLOBAL: expected two strings");
        push(global(module->s, name->s));
        return false;
      }
      case 'Q':  // BINPERSID
        push(persistent_load(pop()));
        return false;
      case 'R': {  // REDUCE
        Value* args = pop();
        Value* fn = pop();
        push(reduce(fn, args));
        return false;
      }
      case 'b': {  // BUILD: only the state of an OrderedDict subclass instance (state_dict()._metadata)
        Value* state = pop();
        Value* obj = top();
        if (obj->kind != Kind::Dict)
          fail(std::string("BUILD on a ") + kind_name(obj->kind) +
               ", expected a dict (only OrderedDict state is accepted)");
        (void)state;  // attributes such as _metadata carry no tensors; dropped
        return false;
      }
      default: {
        static const char* hex = "0123456789abcdef";
        std::string name = "0x";
        name += hex[op >> 4];
        name += hex[op & 15];
        if (op >= 0x20 && op < 0x7f) name += std::string(" ('") + static_cast<char>(op) + "')";
        fail("unsupported opcode " + name + " (a state dict needs only protocol 2-5 data opcodes)");
      }
    }
  }

  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0, op_pos_ = 0;
  const std::string& label_;
  Limits lim_;
  Document* doc_ = nullptr;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
};

Document unpickle(const uint8_t* data, size_t size, const std::string& label, const Limits& limits) {
  return Unpickler(data, size, label, limits).run();
}

}  // namespace kvrun::io::pickle
