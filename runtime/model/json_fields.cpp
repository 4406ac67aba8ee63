#include "model/json_fields.h"

#include <cmath>
#include <limits>

#include "model/error.h"

namespace pqvk::model {

namespace {
std::string at_key(const std::string& where, const std::string& key) { return where + ": key '" + key + "'"; }

[[noreturn]] void wrong_type(const std::string& where, const char* expected, const json& v) {
  model_fail(where, std::string("expected ") + expected + ", got " + json_type_name(v));
}
}  // namespace

const char* json_type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "object";
    case json::value_t::array: return "array";
    case json::value_t::string: return "string";
    case json::value_t::boolean: return "boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "integer";
    case json::value_t::number_float: return "number";
    case json::value_t::binary: return "binary";
    case json::value_t::discarded: return "discarded";
  }
  return "?";
}

void require_object(const json& obj, const std::string& where) {
  if (!obj.is_object()) wrong_type(where, "an object", obj);
}

bool has_key(const json& obj, const std::string& key) {
  if (!obj.is_object()) return false;
  auto it = obj.find(key);
  return it != obj.end() && !it->is_null();
}

const json& require_key(const json& obj, const std::string& key, const std::string& where) {
  require_object(obj, where);
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) model_fail(where, "missing key '" + key + "'");
  return *it;
}

int64_t as_int(const json& v, const std::string& where, int64_t min, int64_t max) {
  int64_t x = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      model_fail(where, "value " + std::to_string(u) + " is out of range [" + std::to_string(min) + ", " +
                            std::to_string(max) + "]");
    x = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    x = v.get<int64_t>();
  } else {
    wrong_type(where, "an integer", v);
  }
  if (x < min || x > max)
    model_fail(where, "value " + std::to_string(x) + " is out of range [" + std::to_string(min) + ", " +
                          std::to_string(max) + "]");
  return x;
}

uint64_t as_u64(const json& v, const std::string& where) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    const int64_t x = v.get<int64_t>();
    if (x < 0) model_fail(where, "value " + std::to_string(x) + " is negative");
    return static_cast<uint64_t>(x);
  }
  wrong_type(where, "a non-negative integer", v);
}

std::vector<uint64_t> as_shape(const json& v, const std::string& where, size_t max_dims) {
  if (!v.is_array()) wrong_type(where, "an array of integers", v);
  if (v.size() > max_dims) model_fail(where, "has " + std::to_string(v.size()) + " dimensions, at most " +
                                                 std::to_string(max_dims) + " allowed");
  std::vector<uint64_t> shape;
  for (size_t i = 0; i < v.size(); ++i) shape.push_back(as_u64(v[i], where + "[" + std::to_string(i) + "]"));
  return shape;
}

int64_t get_int(const json& obj, const std::string& key, const std::string& where, int64_t min, int64_t max) {
  return as_int(require_key(obj, key, where), at_key(where, key), min, max);
}

uint64_t get_u64(const json& obj, const std::string& key, const std::string& where) {
  return as_u64(require_key(obj, key, where), at_key(where, key));
}

double get_number(const json& obj, const std::string& key, const std::string& where) {
  const json& v = require_key(obj, key, where);
  if (!v.is_number()) wrong_type(at_key(where, key), "a number", v);
  const double d = v.get<double>();
  if (!std::isfinite(d)) model_fail(at_key(where, key), "not a finite number");
  return d;
}

bool get_bool(const json& obj, const std::string& key, const std::string& where) {
  const json& v = require_key(obj, key, where);
  if (!v.is_boolean()) wrong_type(at_key(where, key), "a boolean", v);
  return v.get<bool>();
}

std::string get_string(const json& obj, const std::string& key, const std::string& where) {
  const json& v = require_key(obj, key, where);
  if (!v.is_string()) wrong_type(at_key(where, key), "a string", v);
  return v.get<std::string>();
}

int64_t get_int_or(const json& obj, const std::string& key, const std::string& where, int64_t min, int64_t max,
                   int64_t def) {
  return has_key(obj, key) ? get_int(obj, key, where, min, max) : def;
}

double get_number_or(const json& obj, const std::string& key, const std::string& where, double def) {
  return has_key(obj, key) ? get_number(obj, key, where) : def;
}

bool get_bool_or(const json& obj, const std::string& key, const std::string& where, bool def) {
  return has_key(obj, key) ? get_bool(obj, key, where) : def;
}

std::string get_string_or(const json& obj, const std::string& key, const std::string& where,
                          const std::string& def) {
  return has_key(obj, key) ? get_string(obj, key, where) : def;
}

}  // namespace pqvk::model
