#include "chat/chat_ui.h"

#include <imgui.h>
#include <imgui_stdlib.h>

#include <algorithm>
#include <cstdio>

namespace pqvk::chat {

namespace {

const ImVec4 kUserColor(0.55f, 0.78f, 1.00f, 1.0f);
const ImVec4 kAssistantColor(0.60f, 0.90f, 0.60f, 1.0f);
const ImVec4 kErrorColor(1.00f, 0.45f, 0.40f, 1.0f);
const ImU32 kUserBubble = IM_COL32(38, 52, 74, 255);
const ImU32 kAssistantBubble = IM_COL32(40, 44, 40, 255);

std::string ltrim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b);
}

std::string stop_note(const Reply& r) {
  std::string why;
  switch (r.stop) {
    case StopReason::stop: why = "end of turn"; break;
    case StopReason::max_tokens: why = "max tokens reached"; break;
    case StopReason::context_full: why = "context full"; break;
    case StopReason::cancelled: why = "stopped"; break;
    case StopReason::none: why = ""; break;
  }
  const int n = static_cast<int>(r.tokens.size());
  const double tps = r.decode_s > 0 && n > 1 ? (n - 1) / r.decode_s : 0;
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s - %d tokens, %.1f tokens/s, prompt %d tokens (%d reused)", why.c_str(), n, tps,
                r.prompt_tokens, r.reused_tokens);
  return buf;
}

}  // namespace

ChatUi::ChatUi(ChatWorker& worker, UiConfig config) : worker_(worker), config_(std::move(config)) {
  model_field_ = config_.model_path;
  system_field_ = config_.system;
  transcript_.mode = "gui";
  transcript_.device = config_.device_name;
  transcript_.settings = config_.settings;
  transcript_.system = config_.system;
}

// ---- actions ---------------------------------------------------------------------------------

void ChatUi::error(const std::string& text) {
  error_ = text;
  transcript_.errors.push_back(text);
}

void ChatUi::load_model(const std::string& path) {
  if (generating_) worker_.stop();
  loading_ = true;
  worker_.load(path, config_.context, config_.format);
}

bool ChatUi::send(const std::string& text) {
  if (generating_ || loading_) {
    error(loading_ ? "wait for the model to load" : "wait for the reply to finish (or press Stop) before sending another message");
    return false;
  }
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) return false;
  if (transcript_.model.name.empty()) {
    error("no model is loaded: enter a .pqm path and press Load");
    return false;
  }
  error_.clear();
  messages_.push_back({true, text, "", false, false});
  messages_.push_back({false, "", "", true, false});
  pending_user_ = text;
  generating_ = true;
  regenerating_ = false;
  tokens_now_ = 0;
  tokens_per_s_ = 0;
  scroll_to_bottom_ = true;
  transcript_.settings = config_.settings;
  transcript_.system = system_field_;
  worker_.send(text, system_field_, config_.settings);
  return true;
}

void ChatUi::stop() {
  if (generating_) worker_.stop();
}

void ChatUi::regenerate() {
  if (generating_ || loading_ || messages_.size() < 2 || messages_.back().user) return;
  error_.clear();
  Message& last = messages_.back();
  regen_backup_ = last.text;
  last.text.clear();
  last.note.clear();
  last.streaming = true;
  pending_user_ = messages_[messages_.size() - 2].text;
  generating_ = true;
  regenerating_ = true;
  tokens_now_ = 0;
  tokens_per_s_ = 0;
  transcript_.settings = config_.settings;
  transcript_.system = system_field_;
  worker_.regenerate(system_field_, config_.settings);
}

void ChatUi::new_chat() {
  worker_.reset();  // also ends a running reply
  messages_.clear();
  error_.clear();
  context_used_ = 0;
  focus_input_ = true;
}

void ChatUi::set_system(const std::string& text) {
  system_field_ = text;
  transcript_.system = text;
}

// ---- events ------------------------------------------------------------------------------------

void ChatUi::apply(Event& e) {
  switch (e.kind) {
    case Event::loaded:
      loading_ = false;
      transcript_.model = e.model;
      model_field_ = e.model.path;
      messages_.clear();  // a new model starts a new chat
      context_used_ = 0;
      error_.clear();
      break;
    case Event::load_failed:
      loading_ = false;
      transcript_.model = e.model;  // the previous model, if it is still loaded
      error("could not load the model: " + e.text);
      break;
    case Event::started: {
      // Turns dropped to fit the context: the first dropped_turns pairs of messages.
      const size_t dropped = static_cast<size_t>(e.reply.dropped_turns) * 2;
      for (size_t i = 0; i < messages_.size(); ++i) messages_[i].dropped = i < dropped;
      context_used_ = e.reply.prompt_tokens;
      break;
    }
    case Event::chunk:
      if (!messages_.empty() && !messages_.back().user) {
        messages_.back().text += e.text;
        scroll_to_bottom_ = true;
      }
      break;
    case Event::tick:
      tokens_now_ = e.progress.generated;
      tokens_per_s_ = e.progress.tokens_per_s;
      context_used_ = e.progress.context_used;
      break;
    case Event::finished:
      generating_ = false;
      if (!messages_.empty() && !messages_.back().user) {
        messages_.back().streaming = false;
        messages_.back().text = e.reply.text;
        messages_.back().note = stop_note(e.reply);
      }
      context_used_ = e.context_used;
      if (e.reply.tokens.size() > 1 && e.reply.decode_s > 0)
        tokens_per_s_ = static_cast<double>(e.reply.tokens.size() - 1) / e.reply.decode_s;
      transcript_.generations.push_back({pending_user_, e.regenerated, transcript_.system, e.reply});
      focus_input_ = true;
      scroll_to_bottom_ = true;
      break;
    case Event::failed:
      generating_ = false;
      if (e.regenerated) {
        if (!messages_.empty() && !messages_.back().user) {
          messages_.back().text = regen_backup_;
          messages_.back().streaming = false;
        }
      } else if (messages_.size() >= 2) {
        messages_.resize(messages_.size() - 2);  // the turn was not added
        if (input_.empty()) input_ = pending_user_;  // give the text back
      }
      error(e.text);
      focus_input_ = true;
      break;
    case Event::cleared:
      break;
  }
}

// ---- drawing -----------------------------------------------------------------------------------

void ChatUi::frame() {
  const bool busy = worker_.busy();  // read before polling: the events of finished jobs are all there
  std::vector<Event> events = worker_.poll();
  for (Event& e : events) apply(e);
  worker_busy_ = busy;

  const ImGuiIO& io = ImGui::GetIO();
  ImGui::SetNextWindowPos(ImVec2(0, 0));
  ImGui::SetNextWindowSize(io.DisplaySize);
  ImGui::Begin("pq-chat", nullptr,
               ImGuiWindowFlags_NoDecoration | ImGuiWindowFlags_NoMove | ImGuiWindowFlags_NoSavedSettings |
                   ImGuiWindowFlags_NoBringToFrontOnFocus);
  const float status_h = ImGui::GetFrameHeightWithSpacing() + ImGui::GetStyle().ItemSpacing.y;
  const float body_h = ImGui::GetContentRegionAvail().y - status_h;
  draw_settings(body_h);
  ImGui::SameLine();
  ImGui::BeginGroup();
  const float wrap_w = std::max(100.0f, ImGui::GetContentRegionAvail().x - 100.0f);  // left of "dismiss"
  const float input_h = ImGui::GetTextLineHeightWithSpacing() * 4 + ImGui::GetFrameHeightWithSpacing() +
                        error_height(wrap_w);
  draw_transcript(body_h - input_h);
  draw_input(wrap_w);
  ImGui::EndGroup();
  draw_status();
  ImGui::End();
}

void ChatUi::draw_settings(float height) {
  ImGui::BeginChild("settings", ImVec2(330, height), true);

  ImGui::TextColored(kAssistantColor, "Model");
  ImGui::SetNextItemWidth(-60);
  ImGui::InputText("##model", &model_field_);
  ImGui::SameLine();
  ImGui::BeginDisabled(loading_);
  if (ImGui::Button("Load", ImVec2(-1, 0))) load_model(model_field_);
  ImGui::EndDisabled();
  if (loading_) ImGui::TextDisabled("loading ...");

  ImGui::Spacing();
  ImGui::TextColored(kAssistantColor, "System prompt");
  if (ImGui::InputTextMultiline("##system", &system_field_, ImVec2(-1, ImGui::GetTextLineHeight() * 5)))
    transcript_.system = system_field_;
  ImGui::TextDisabled("applies from the next message");

  ImGui::Spacing();
  ImGui::TextColored(kAssistantColor, "Sampling");
  llm::SamplerConfig& s = config_.settings.sampler;
  ImGui::PushItemWidth(150);
  ImGui::SliderFloat("temperature", &s.temperature, 0.0f, 2.0f, "%.2f");
  ImGui::SliderInt("top-k", &s.top_k, 0, 200);
  ImGui::SliderFloat("top-p", &s.top_p, 0.01f, 1.0f, "%.2f");
  ImGui::SliderFloat("min-p", &s.min_p, 0.0f, 1.0f, "%.2f");
  ImGui::SliderFloat("repeat penalty", &s.repeat_penalty, 1.0f, 2.0f, "%.2f");
  ImGui::InputScalar("seed", ImGuiDataType_U64, &s.seed);
  const int max_ctx = std::max(1, transcript_.model.context_size > 0 ? transcript_.model.context_size : 4096);
  ImGui::SliderInt("max tokens", &config_.settings.max_tokens, 1, max_ctx);
  ImGui::PopItemWidth();
  // Keep the settings valid whatever was typed into a slider (Ctrl+click edits the number).
  s.temperature = std::clamp(s.temperature, 0.0f, 100.0f);
  s.top_k = std::max(0, s.top_k);
  s.top_p = std::clamp(s.top_p, 0.01f, 1.0f);
  s.min_p = std::clamp(s.min_p, 0.0f, 1.0f);
  s.repeat_penalty = std::clamp(s.repeat_penalty, 0.01f, 100.0f);
  config_.settings.max_tokens = std::max(1, config_.settings.max_tokens);
  ImGui::TextDisabled("temperature 0: greedy");

  ImGui::Spacing();
  ImGui::BeginDisabled(loading_);
  if (ImGui::Button("New chat", ImVec2(-1, 0))) new_chat();
  ImGui::EndDisabled();
  ImGui::EndChild();
}

void ChatUi::draw_transcript(float height) {
  ImGui::BeginChild("transcript", ImVec2(0, height), true);
  const ImGuiIO& io = ImGui::GetIO();
  const bool at_bottom = ImGui::GetScrollY() >= ImGui::GetScrollMaxY() - 4.0f;
  const ImVec2 view_min = ImGui::GetWindowPos();
  const ImVec2 view_max(view_min.x + ImGui::GetWindowSize().x, view_min.y + ImGui::GetWindowSize().y);
  rendered_ = nlohmann::json::array();

  if (messages_.empty())
    ImGui::TextDisabled(transcript_.model.name.empty() ? "No model loaded." : "Type a message below and press Enter.");
  ImDrawList* dl = ImGui::GetWindowDrawList();
  const float pad = 6.0f;
  for (size_t i = 0; i < messages_.size(); ++i) {
    const Message& m = messages_[i];
    ImGui::PushID(static_cast<int>(i));
    dl->ChannelsSplit(2);
    dl->ChannelsSetCurrent(1);
    ImGui::Indent(pad);
    ImGui::BeginGroup();
    ImGui::Dummy(ImVec2(0, pad * 0.5f));
    ImGui::TextColored(m.user ? kUserColor : kAssistantColor, "%s", m.user ? "You" : "Assistant");
    if (m.dropped) {
      ImGui::SameLine();
      ImGui::TextDisabled("(dropped from the context)");
    }
    const std::string shown = m.user ? m.text : ltrim(m.text);
    ImGui::PushTextWrapPos(ImGui::GetContentRegionMax().x - pad);
    if (m.dropped) ImGui::PushStyleColor(ImGuiCol_Text, ImGui::GetStyleColorVec4(ImGuiCol_TextDisabled));
    ImVec2 ta(0, 0), tb(0, 0);  // the message text's rectangle
    if (!shown.empty()) {
      ImGui::TextUnformatted(shown.c_str(), shown.c_str() + shown.size());
      ta = ImGui::GetItemRectMin();
      tb = ImGui::GetItemRectMax();
    } else if (m.streaming) {
      ImGui::TextDisabled("...");
    }
    if (m.dropped) ImGui::PopStyleColor();
    ImGui::PopTextWrapPos();
    if (!m.note.empty()) ImGui::TextDisabled("%s", m.note.c_str());
    else if (m.streaming && !shown.empty()) ImGui::TextDisabled("generating ...");
    ImGui::Dummy(ImVec2(0, pad * 0.5f));
    ImGui::EndGroup();
    ImGui::Unindent(pad);
    ImVec2 a = ImGui::GetItemRectMin(), b = ImGui::GetItemRectMax();
    a.x -= pad;
    b.x = view_min.x + ImGui::GetContentRegionMax().x;
    dl->ChannelsSetCurrent(0);
    dl->AddRectFilled(a, b, m.user ? kUserBubble : kAssistantBubble, 6.0f);
    dl->ChannelsMerge();
    ImGui::PopID();
    ImGui::Spacing();

    // The visible part of the message's text and of its bubble, in framebuffer pixels.
    auto visible = [&](ImVec2 p, ImVec2 q) {
      const ImVec2 sc = io.DisplayFramebufferScale;
      const float x0 = std::max(p.x, view_min.x), y0 = std::max(p.y, view_min.y);
      const float x1 = std::min(q.x, view_max.x), y1 = std::min(q.y, view_max.y);
      if (x1 <= x0 || y1 <= y0) return nlohmann::json();
      return nlohmann::json::array({static_cast<int>(x0 * sc.x), static_cast<int>(y0 * sc.y),
                                    static_cast<int>((x1 - x0) * sc.x), static_cast<int>((y1 - y0) * sc.y)});
    };
    nlohmann::json text_rect = visible(ta, tb), bubble = visible(a, b);
    if (!text_rect.is_null())
      rendered_.push_back({{"index", i},
                           {"role", m.user ? "user" : "assistant"},
                           {"chars", shown.size()},
                           {"rect", text_rect},
                           {"bubble", bubble}});
  }
  if (scroll_to_bottom_ && at_bottom) ImGui::SetScrollHereY(1.0f);
  scroll_to_bottom_ = false;
  ImGui::EndChild();
}

float ChatUi::error_height(float wrap_w) const {
  if (error_.empty()) return 0;
  const std::string text = "Error: " + error_;
  return ImGui::CalcTextSize(text.c_str(), nullptr, false, wrap_w).y + ImGui::GetStyle().ItemSpacing.y;
}

void ChatUi::draw_input(float wrap_w) {
  if (!error_.empty()) {
    const std::string text = "Error: " + error_;
    ImGui::PushTextWrapPos(ImGui::GetCursorPosX() + wrap_w);
    ImGui::PushStyleColor(ImGuiCol_Text, kErrorColor);
    ImGui::TextUnformatted(text.c_str());
    ImGui::PopStyleColor();
    ImGui::PopTextWrapPos();
    ImGui::SameLine();
    if (ImGui::SmallButton("dismiss")) error_.clear();
  }
  ImGuiIO& io = ImGui::GetIO();
  const float buttons_w = 120.0f;
  const float box_h = ImGui::GetTextLineHeightWithSpacing() * 4;
  // Enter sends and Shift+Enter starts a new line: the box treats Enter as "done" and
  // Ctrl+Enter as a newline (CtrlEnterForNewLine), so Shift+Enter is shown to it as Ctrl+Enter.
  const bool enter = ImGui::IsKeyPressed(ImGui::GetKeyIndex(ImGuiKey_Enter)) ||
                     ImGui::IsKeyPressed(ImGui::GetKeyIndex(ImGuiKey_KeyPadEnter));
  const bool ctrl = io.KeyCtrl;
  const ImGuiKeyModFlags mods = io.KeyMods;
  if (enter && io.KeyShift) {
    io.KeyCtrl = true;
    io.KeyMods |= ImGuiKeyModFlags_Ctrl;  // ImGui checks that the two agree
  }
  if (focus_input_) {
    ImGui::SetKeyboardFocusHere();
    focus_input_ = false;
  }
  const bool submitted = ImGui::InputTextMultiline(
      "##input", &input_, ImVec2(-buttons_w - ImGui::GetStyle().ItemSpacing.x, box_h),
      ImGuiInputTextFlags_CtrlEnterForNewLine | ImGuiInputTextFlags_EnterReturnsTrue);
  input_active_ = ImGui::IsItemActive();
  io.KeyCtrl = ctrl;
  io.KeyMods = mods;
  if (submitted) {
    if (send(input_)) input_.clear();  // refused: the text stays in the box
    focus_input_ = true;              // Enter deactivates the box; keep typing in it
  }
  ImGui::SameLine();
  ImGui::BeginGroup();
  const ImVec2 bsize(buttons_w, (box_h - ImGui::GetStyle().ItemSpacing.y) / 2);
  if (generating_) {
    if (ImGui::Button("Stop", bsize)) stop();
  } else {
    ImGui::BeginDisabled(loading_);
    if (ImGui::Button("Send", bsize)) {
      if (send(input_)) input_.clear();
      focus_input_ = true;
    }
    ImGui::EndDisabled();
  }
  ImGui::BeginDisabled(generating_ || loading_ || messages_.size() < 2);
  if (ImGui::Button("Regenerate", bsize)) regenerate();
  ImGui::EndDisabled();
  ImGui::EndGroup();
  ImGui::TextDisabled("Enter sends, Shift+Enter adds a line");
}

void ChatUi::draw_status() {
  ImGui::Separator();
  const ModelInfo& m = transcript_.model;
  std::string model = m.name.empty() ? std::string("no model") : m.name + " (" + m.format + ")";
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s  |  %s  |  context %d / %d  |  %.1f tokens/s%s", model.c_str(),
                config_.device_name.c_str(), context_used_, m.context_size, tokens_per_s_,
                loading_ ? "  |  loading" : generating_ ? "  |  generating" : "");
  ImGui::TextUnformatted(buf);
}

}  // namespace pqvk::chat
