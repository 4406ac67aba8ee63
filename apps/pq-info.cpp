// pq-info: what the Vulkan devices here can do, or what a .pqm model holds.
//   pq-info                 every device, with the one pqvk would pick marked
//   pq-info --device H100   only the matching device, as the runtime opens it
//   pq-info --json          the same as JSON
//   pq-info model.pqm       the model's metadata and tensor table (no GPU needed; checksums
//                           verified unless --no-verify); with --json, the file's index JSON
//   pq-info model.pqm --fit [--ctx N] [--parallel S] [--kv-type T] [--device D]
//                           the device memory the model takes there at N tokens (default: its
//                           maximum) for S sequences, and the longest context that fits
//   pq-info --chat-template T.jinja --messages CONV.json [--add-generation-prompt] [--bos X] [--eos Y]
//   pq-info model.pqm --messages CONV.json [...]
//                           the prompt a chat template (or the model's) renders for a conversation
//                           ({"messages": [...], "tools": [...]}, OpenAI's shape), byte for byte
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "llm/gpu_model.h"
#include "model/checked_math.h"
#include "model/pqm.h"
#include "tokenize/chat.h"
#include "vk/context.h"
#include "vk/shader_registry.h"
#include "kv_type_option.h"

namespace {

std::string mib(uint64_t b) { return std::to_string(b >> 20) + " MiB"; }

nlohmann::json to_json(const std::vector<pqvk::vk::CoopMatShape>& shapes) {
  using S = pqvk::vk::CoopMatShape;
  nlohmann::json out = nlohmann::json::array();
  for (const S& s : shapes)
    out.push_back({{"m", s.m}, {"n", s.n}, {"k", s.k}, {"a", S::name(s.a)}, {"b", S::name(s.b)}, {"c", S::name(s.c)},
                   {"d", S::name(s.d)}, {"scope", S::name(s.scope)}, {"saturating", s.saturating}});
  return out;
}

// One line per shape: the first after `label`, the others aligned under it.
void print_shapes(const char* label, const std::vector<pqvk::vk::CoopMatShape>& shapes) {
  for (size_t i = 0; i < shapes.size(); ++i)
    std::printf("    %-22s %s\n", i == 0 ? label : "", shapes[i].str().c_str());
}

nlohmann::json to_json(const pqvk::vk::DeviceInfo& d) {
  nlohmann::json heaps = nlohmann::json::array();
  for (const auto& h : d.heaps)
    heaps.push_back({{"size", h.size}, {"budget", h.budget}, {"usage", h.usage}, {"device_local", h.device_local}});
  return {{"index", d.index}, {"name", d.name}, {"type", d.type}, {"driver", d.driver}, {"api_version", d.api_version},
          {"vendor_id", d.vendor_id}, {"device_id", d.device_id},
          {"subgroup_size", d.subgroup_size}, {"min_subgroup_size", d.min_subgroup_size},
          {"max_subgroup_size", d.max_subgroup_size}, {"subgroup_size_control", d.subgroup_size_control},
          {"subgroup_arithmetic", d.subgroup_arithmetic}, {"subgroup_shuffle", d.subgroup_shuffle},
          {"fp16", d.fp16}, {"int8", d.int8}, {"storage_8bit", d.storage_8bit}, {"storage_16bit", d.storage_16bit},
          {"vulkan_memory_model", d.vulkan_memory_model},
          {"cooperative_matrix_khr", d.cooperative_matrix_khr}, {"cooperative_matrix_nv", d.cooperative_matrix_nv},
          {"cooperative_matrix2_nv", d.cooperative_matrix2_nv}, {"integer_dot_product", d.integer_dot_product},
          {"max_storage_buffer_range", d.max_storage_buffer_range}, {"max_allocation_size", d.max_allocation_size},
          {"max_shared_memory", d.max_shared_memory}, {"max_workgroup_invocations", d.max_workgroup_invocations},
          {"timestamp_period_ns", d.timestamp_period_ns}, {"memory_budget", d.memory_budget}, {"heaps", heaps},
          {"coopmat_nv", to_json(d.coopmat_nv)}, {"coopmat_khr", to_json(d.coopmat_khr)}};
}

void print(const pqvk::vk::DeviceInfo& d, bool chosen) {
  auto yn = [](bool b) { return b ? "yes" : "no"; };
  std::printf("%s%u: %s (%s, Vulkan %s)\n", chosen ? "* " : "  ", d.index, d.name.c_str(), d.type.c_str(),
              d.api_version.c_str());
  std::printf("    driver                 %s\n", d.driver.c_str());
  std::printf("    subgroup size          %u (range %u..%u, size control: %s, arithmetic: %s, shuffle: %s)\n",
              d.subgroup_size, d.min_subgroup_size, d.max_subgroup_size, yn(d.subgroup_size_control),
              yn(d.subgroup_arithmetic), yn(d.subgroup_shuffle));
  std::printf("    fp16 / int8 arithmetic %s / %s\n", yn(d.fp16), yn(d.int8));
  std::printf("    8 / 16-bit storage     %s / %s\n", yn(d.storage_8bit), yn(d.storage_16bit));
  std::printf("    Vulkan memory model    %s\n", yn(d.vulkan_memory_model));
  std::printf("    cooperative matrix     KHR: %s, NV: %s, NV2: %s\n", yn(d.cooperative_matrix_khr),
              yn(d.cooperative_matrix_nv), yn(d.cooperative_matrix2_nv));
  print_shapes("  NV shapes (MxNxK)", d.coopmat_nv);
  print_shapes("  KHR shapes (MxNxK)", d.coopmat_khr);
  std::printf("    integer dot product    %s\n", yn(d.integer_dot_product));
  std::printf("    max storage buffer     %s per binding\n", mib(d.max_storage_buffer_range).c_str());
  std::printf("    max allocation         %s\n", mib(d.max_allocation_size).c_str());
  std::printf("    shared memory          %u KiB per workgroup, %u invocations max\n", d.max_shared_memory / 1024,
              d.max_workgroup_invocations);
  std::printf("    timestamps             %s\n", d.timestamp_period_ns > 0 ? "yes" : "no");
  for (size_t i = 0; i < d.heaps.size(); ++i) {
    const auto& h = d.heaps[i];
    std::printf("    heap %zu                 %s%s", i, mib(h.size).c_str(), h.device_local ? " device-local" : "");
    if (d.memory_budget) std::printf(", budget %s, used %s", mib(h.budget).c_str(), mib(h.usage).c_str());
    std::printf("\n");
  }
}

// ---- pq-info model.pqm ------------------------------------------------------------------------

std::string yes_no(bool b) { return b ? "yes" : "no"; }

void print_model(const pqvk::model::ModelConfig& c) {
  std::printf("model        %s: dim %lld, hidden %lld, %lld layers, %lld heads (%lld kv, head_dim %lld), vocab %lld, context %lld\n",
              c.architecture.c_str(), (long long)c.dim, (long long)c.hidden_dim, (long long)c.n_layers, (long long)c.n_heads,
              (long long)c.n_kv_heads, (long long)c.head_dim, (long long)c.vocab_size, (long long)c.max_seq_len);
  std::printf("             rope theta %g, scaling %s", c.rope_theta, c.rope_scaling.type.c_str());
  if (c.rope_scaling.type != "none") std::printf(" (factor %g", c.rope_scaling.factor);
  if (c.rope_scaling.type == "llama3")
    std::printf(", low %g, high %g, original context %lld", c.rope_scaling.low_freq_factor, c.rope_scaling.high_freq_factor,
                (long long)c.rope_scaling.original_max_position_embeddings);
  if (c.rope_scaling.type != "none") std::printf(")");
  std::printf("; rms_norm_eps %g\n", c.rms_norm_eps);
  std::printf("             tied embeddings %s, qkv bias %s, o bias %s, q/k norm %s, sliding window %lld\n",
              yes_no(c.tie_word_embeddings).c_str(), yes_no(c.qkv_bias).c_str(), yes_no(c.o_bias).c_str(),
              yes_no(c.qk_norm).c_str(), (long long)c.sliding_window);
  std::string eos;
  for (int64_t e : c.eos_ids) eos += (eos.empty() ? "" : ", ") + std::to_string(e);
  std::printf("             bos %lld, eos [%s]\n", (long long)c.bos_id, eos.c_str());
}

void print_tokenizer(const pqvk::model::PqmFile& f) {
  const auto& t = f.tokenizer();
  std::printf("tokenizer    %s", t.kind.c_str());
  if (t.kind == "sentencepiece") std::printf(" (model %llu bytes)", (unsigned long long)f.tensor("tokenizer.model").size);
  if (t.kind == "bpe" || t.kind == "llama2c")
    std::printf(" (%zu tokens)", f.read_strings(f.tensor("tokenizer.vocab")).size());
  if (t.kind == "bpe") std::printf(", %zu merges", f.read_strings(f.tensor("tokenizer.merges")).size() / 2);
  std::printf(", %zu added tokens, chat template: %s\n", t.added_tokens.size(),
              t.chat_template.empty() ? "none" : (std::to_string(t.chat_template.size()) + " characters").c_str());
}

void print_tensors(const pqvk::model::PqmFile& f) {
  uint64_t bytes = 0;
  for (const auto& t : f.tensors()) bytes += t.size;
  std::printf("tensors      %zu, %llu bytes\n", f.tensors().size(), (unsigned long long)bytes);
  std::printf("  %-28s %-5s %-14s %-24s %11s %11s %10s\n", "name", "kind", "shape", "quantization", "bytes", "offset", "crc32");
  for (const auto& t : f.tensors()) {
    std::string quant = "-";
    if (t.kind == pqvk::model::TensorKind::pq)
      quant = std::string(pq::method_name(t.quant.method)) + " q" + std::to_string(t.quant.bits) + " B" +
              std::to_string(t.quant.block) + (t.quant.rotated ? " rot" : "");
    std::printf("  %-28s %-5s %-14s %-24s %11llu %11llu   %08x\n", t.name.c_str(), pqvk::model::kind_name(t.kind),
                pqvk::model::shape_string(t.shape).c_str(), quant.c_str(), (unsigned long long)t.size,
                (unsigned long long)t.offset, t.crc32);
  }
}

int show_model(const std::string& path, bool verify, bool json) {
  const auto f = pqvk::model::PqmFile::open(path, {.verify_checksums = verify});
  if (json) {
    std::printf("%s\n", f.index().dump(2).c_str());
    return 0;
  }
  std::printf("file         %s: %llu bytes, .pqm version %u, alignment %u, checksums %s\n", path.c_str(),
              (unsigned long long)f.file_size(), f.version(), f.alignment(), verify ? "verified" : "not checked");
  print_model(f.config());
  print_tokenizer(f);
  if (f.index().contains("quantization")) std::printf("quantization %s\n", f.index()["quantization"].dump().c_str());
  print_tensors(f);
  return 0;
}

// ---- pq-info --messages: render a chat template ------------------------------------------------

struct ChatRender {
  std::string template_path, messages_path;
  bool add_generation_prompt = false;
  std::optional<std::string> bos, eos;
};

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw std::runtime_error(path + ": cannot read");
  return ss.str();
}

int render_chat(const std::string& model_path, const ChatRender& o) {
  namespace tk = pqvk::tokenize;
  tk::ChatTemplateInput in;
  {
    pqvk::jinja::json conv;
    try {
      conv = pqvk::jinja::json::parse(read_text(o.messages_path));
    } catch (const pqvk::jinja::json::parse_error& e) {
      throw std::runtime_error(o.messages_path + ": not valid JSON: " + e.what());
    }
    in = tk::parse_conversation(conv, o.messages_path);
  }
  in.add_generation_prompt = o.add_generation_prompt;
  std::string name = o.template_path, bos, eos;
  std::optional<tk::ChatTemplate> model_template;
  if (!model_path.empty()) {
    const auto f = pqvk::model::PqmFile::open(model_path, {.verify_checksums = false});
    if (f.tokenizer().kind != "none") {
      const auto tok = tk::Tokenizer::from_pqm(f);
      if (tok->bos() >= 0) bos = tok->token_bytes(tok->bos());
      if (!tok->eos_ids().empty()) eos = tok->token_bytes(tok->eos_ids()[0]);
      if (o.template_path.empty()) model_template = tk::ChatTemplate::for_model(f.tokenizer(), f.config(), *tok);
    } else if (o.template_path.empty()) {
      if (f.tokenizer().chat_template.empty())
        throw std::runtime_error(model_path + ": the model has neither a chat template nor a tokenizer");
      model_template = tk::ChatTemplate::jinja(f.tokenizer().chat_template, model_path + ": chat template", "", "");
    }
  }
  in.bos_token = o.bos.value_or(bos);
  in.eos_token = o.eos.value_or(eos);
  // The given template file, else the model's (its Jinja template, or its built-in format).
  const tk::ChatTemplate t = model_template ? *model_template : tk::ChatTemplate::jinja(read_text(o.template_path), name, "", "");
  const std::string out = t.render(in);
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
  return 0;
}

// pq-info MODEL --fit: the memory plan (GpuModel::memory_plan) at `ctx` tokens for `parallel`
// sequences on the chosen device, and the longest context that fits there.
int show_fit(const std::string& path, const std::string& device, int64_t ctx, uint32_t parallel, int kv_bits, bool json) {
  auto file = pqvk::model::PqmFile::open(path);
  const auto& c = file.config();
  if (ctx <= 0) ctx = c.max_seq_len;
  if (ctx > c.max_seq_len)
    throw std::runtime_error("--ctx " + std::to_string(ctx) + " exceeds the model's maximum of " + std::to_string(c.max_seq_len) + " tokens");
  pqvk::vk::ContextOptions opts;
  opts.device = device;
  opts.pipeline_cache = "off";
  pqvk::vk::Context vkc(opts);
  pqvk::llm::GpuOptions o;
  o.slots = parallel > 1 ? parallel : 0;
  o.kv_bits = kv_bits;
  const uint64_t weights = pqvk::llm::GpuModel::planned_weight_bytes(file);
  const uint64_t avail = pqvk::llm::device_memory_available(vkc.info());
  const auto plan = pqvk::llm::GpuModel::memory_plan(c, weights, o, ctx);
  const int64_t fits = pqvk::llm::GpuModel::max_context(c, weights, o, avail);
  const uint64_t per_token = pqvk::llm::GpuModel::memory_plan(c, 0, o, 1).kv_cache;  // every sequence's
  if (json) {
    std::printf("%s\n", nlohmann::json{{"device", vkc.info().name}, {"available_bytes", avail}, {"context", ctx},
                                       {"parallel", std::max<uint32_t>(1, parallel)}, {"weights_bytes", plan.weights},
                                       {"kv_cache_bytes", plan.kv_cache}, {"kv_bytes_per_token", per_token},
                                       {"activations_bytes", plan.activations}, {"total_bytes", plan.total()},
                                       {"fits", plan.total() <= avail}, {"max_context", fits}}.dump(2).c_str());
    return 0;
  }
  auto size = [](uint64_t b) {
    char buf[32];
    if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1ull << 30));
    else std::snprintf(buf, sizeof buf, "%.1f MiB", b / double(1ull << 20));
    return std::string(buf);
  };
  std::printf("device       %s: %s of device memory available\n", vkc.info().name.c_str(), size(avail).c_str());
  std::printf("at %lld tokens%s: weights %s + KV cache %s (%s, %.1f KiB a token) + activations %s = %s: %s\n",
              static_cast<long long>(ctx), parallel > 1 ? (" x " + std::to_string(parallel) + " sequences").c_str() : "",
              size(plan.weights).c_str(), size(plan.kv_cache).c_str(), kv_bits ? ("pq" + std::to_string(kv_bits)).c_str() : "fp16",
              per_token / 1024.0, size(plan.activations).c_str(),
              size(plan.total()).c_str(), plan.total() <= avail ? "fits" : "does not fit");
  if (fits > 0)
    std::printf("longest context that fits: %lld tokens%s\n", static_cast<long long>(fits),
                fits == c.max_seq_len ? " (the model's maximum)" : "");
  else
    std::printf("not even the weights fit\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pq-info: the Vulkan devices pqvk sees and what they can do"};
  std::string device;
  bool json = false, no_verify = false;
  std::string model;
  app.add_option("MODEL", model, "A .pqm file: print its metadata and tensor table instead of the devices (no GPU needed)");
  app.add_flag("--no-verify", no_verify, "With MODEL: skip the tensor checksums");
  app.add_option("-d,--device", device, "Device index or name substring (default: $PQVK_DEVICE, else the best GPU)");
  app.add_flag("--json", json, "Print JSON");
  bool fit = false;
  int64_t fit_ctx = 0;
  uint32_t fit_parallel = 1;
  app.add_flag("--fit", fit, "With MODEL: the device memory it takes on the device at --ctx tokens, and the longest context that fits");
  app.add_option("-c,--ctx", fit_ctx, "With --fit: context in tokens (default: the model's maximum)")->check(CLI::PositiveNumber);
  app.add_option("--parallel", fit_parallel, "With --fit: sequences, each with its own context (pq-server --parallel)")
      ->check(CLI::Range(1, 256));
  std::string fit_kv = "f16";
  pqvk::apps::add_kv_type_option(app, fit_kv, "With --fit: ");
  ChatRender chat;
  std::string bos, eos;
  auto* tmpl_opt = app.add_option("--chat-template", chat.template_path,
                                  "A Jinja chat template file to render (with --messages); default: MODEL's");
  auto* msg_opt = app.add_option("--messages", chat.messages_path,
                                 "Print the prompt the chat template renders for CONVERSATION.json "
                                 "({\"messages\": [...], \"tools\": [...]}; other keys become template variables)");
  app.add_flag("--add-generation-prompt", chat.add_generation_prompt, "With --messages: end with the assistant's turn opening");
  auto* bos_opt = app.add_option("--bos", bos, "With --messages: bos_token (default: MODEL's BOS text, else empty)");
  auto* eos_opt = app.add_option("--eos", eos, "With --messages: eos_token (default: MODEL's first EOS text, else empty)");
  tmpl_opt->needs(msg_opt);
  CLI11_PARSE(app, argc, argv);
  if (*bos_opt) chat.bos = bos;
  if (*eos_opt) chat.eos = eos;
  if (!chat.messages_path.empty()) {
    try {
      if (chat.template_path.empty() && model.empty())
        throw std::runtime_error("--messages needs --chat-template FILE or a MODEL.pqm whose template to use");
      return render_chat(model, chat);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pq-info: error: %s\n", e.what());
      return 1;
    }
  }
  if (fit && model.empty()) {
    std::fprintf(stderr, "pq-info: error: --fit needs a MODEL.pqm\n");
    return 1;
  }
  if (!model.empty()) {
    try {
      if (fit) return show_fit(model, device, fit_ctx, fit_parallel, pqvk::apps::kv_bits(fit_kv), json);
      return show_model(model, !no_verify, json);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pq-info: error: %s\n", e.what());
      return 1;
    }
  }
  try {
    auto all = pqvk::vk::Context::list_devices();
    pqvk::vk::ContextOptions opts;
    opts.device = device;
    opts.pipeline_cache = "off";
    pqvk::vk::Context ctx(opts);  // the device the runtime would pick
    if (json) {
      nlohmann::json out = {{"selected", ctx.info().index}, {"devices", nlohmann::json::array()},
                            {"shaders", pqvk::shaders::names()}};
      for (const auto& d : all) out["devices"].push_back(to_json(d));
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      std::printf("Vulkan devices (* = the one pqvk uses; choose with --device or PQVK_DEVICE):\n");
      for (const auto& d : all)
        if (device.empty() || d.index == ctx.info().index) print(d, d.index == ctx.info().index);
      std::printf("embedded shaders: %zu\n", pqvk::shaders::names().size());
    }
    if (ctx.validation_messages()) {
      std::fprintf(stderr, "pq-info: %u Vulkan validation messages\n", ctx.validation_messages());
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pq-info: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
