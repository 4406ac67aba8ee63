// Checks a pq-chat screenshot against its transcript: every message the last frame drew
// (transcript "rendered": role, characters, the text's rectangle in pixels) must show text in
// that rectangle of the PNG. Text is "ink": pixels far from the rectangle's most common colour
// (the message's background). A message of N characters needs at least 10 N ink pixels (its
// glyphs in the 17 px UI font average 30-60), and ink may not cover more than 40% of the
// rectangle (a solid block is not text). The rectangle holds the message only, not its
// "You" / "Assistant" label or the note under it.
//
//   pq_chat_png_check SCREENSHOT.png TRANSCRIPT.json MIN_MESSAGES
#include <png.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: pq_chat_png_check SCREENSHOT.png TRANSCRIPT.json MIN_MESSAGES\n");
    return 2;
  }
  png_image img{};
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&img, argv[1])) {
    std::fprintf(stderr, "cannot read %s: %s\n", argv[1], img.message);
    return 1;
  }
  img.format = PNG_FORMAT_RGB;
  std::vector<unsigned char> px(PNG_IMAGE_SIZE(img));
  if (!png_image_finish_read(&img, nullptr, px.data(), 0, nullptr)) {
    std::fprintf(stderr, "cannot decode %s: %s\n", argv[1], img.message);
    return 1;
  }
  const int W = static_cast<int>(img.width), H = static_cast<int>(img.height);

  nlohmann::json j;
  try {
    std::ifstream f(argv[2]);
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cannot parse %s: %s\n", argv[2], e.what());
    return 1;
  }
  const auto& rendered = j.value("rendered", nlohmann::json::array());
  const size_t min_messages = std::strtoul(argv[3], nullptr, 10);
  bool ok = true;
  if (rendered.size() < min_messages) {
    std::fprintf(stderr, "the last frame drew %zu messages, expected at least %zu\n", rendered.size(), min_messages);
    ok = false;
  }
  for (const auto& m : rendered) {
    const auto& r = m.at("rect");
    const int x = r.at(0), y = r.at(1), w = r.at(2), h = r.at(3);
    const size_t chars = m.at("chars");
    const std::string role = m.at("role");
    if (x < 0 || y < 0 || w <= 0 || h <= 0 || x + w > W || y + h > H) {
      std::fprintf(stderr, "%s message rect [%d %d %d %d] is outside the %dx%d image\n", role.c_str(), x, y, w, h, W, H);
      ok = false;
      continue;
    }
    std::map<unsigned, size_t> hist;
    for (int yy = y; yy < y + h; ++yy)
      for (int xx = x; xx < x + w; ++xx) {
        const unsigned char* p = &px[(size_t(yy) * W + xx) * 3];
        ++hist[(unsigned(p[0]) << 16) | (unsigned(p[1]) << 8) | p[2]];
      }
    unsigned bg = 0;
    size_t best = 0;
    for (const auto& [c, n] : hist)
      if (n > best) best = n, bg = c;
    size_t ink = 0;
    for (int yy = y; yy < y + h; ++yy)
      for (int xx = x; xx < x + w; ++xx) {
        const unsigned char* p = &px[(size_t(yy) * W + xx) * 3];
        const int d = std::abs(int(p[0]) - int(bg >> 16)) + std::abs(int(p[1]) - int((bg >> 8) & 255)) +
                      std::abs(int(p[2]) - int(bg & 255));
        if (d > 96) ++ink;
      }
    const double frac = double(ink) / (double(w) * h);
    const bool good = chars > 0 && ink >= 10 * chars && frac <= 0.40;
    std::printf("%-9s %3zu chars  rect [%4d %4d %4d %4d]  background #%06x  ink %6zu px (%.1f%%)  %s\n", role.c_str(),
                chars, x, y, w, h, bg, ink, 100 * frac, good ? "ok" : "NO TEXT");
    ok = ok && good;
  }
  return ok ? 0 : 1;
}
