// Typed, validated access to JSON objects read from files. Every failure is a ModelError
// naming `where` (the file and the object) and the key: "config.json: key 'hidden_size':
// expected an integer, got string".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace pqvk::model {

using nlohmann::json;

const char* json_type_name(const json& v);

// The object itself must be a JSON object.
void require_object(const json& obj, const std::string& where);
bool has_key(const json& obj, const std::string& key);  // present and not null
const json& require_key(const json& obj, const std::string& key, const std::string& where);

int64_t get_int(const json& obj, const std::string& key, const std::string& where, int64_t min, int64_t max);
uint64_t get_u64(const json& obj, const std::string& key, const std::string& where);
double get_number(const json& obj, const std::string& key, const std::string& where);
bool get_bool(const json& obj, const std::string& key, const std::string& where);
std::string get_string(const json& obj, const std::string& key, const std::string& where);

// Absent or null: the default.
int64_t get_int_or(const json& obj, const std::string& key, const std::string& where, int64_t min, int64_t max,
                   int64_t def);
double get_number_or(const json& obj, const std::string& key, const std::string& where, double def);
bool get_bool_or(const json& obj, const std::string& key, const std::string& where, bool def);
std::string get_string_or(const json& obj, const std::string& key, const std::string& where, const std::string& def);

// A value (not an object member) as an integer in [min, max].
int64_t as_int(const json& v, const std::string& where, int64_t min, int64_t max);
uint64_t as_u64(const json& v, const std::string& where);
// An array of integers >= 0 (a tensor shape).
std::vector<uint64_t> as_shape(const json& v, const std::string& where, size_t max_dims);

}  // namespace pqvk::model
