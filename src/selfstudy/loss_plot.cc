#include "selfstudy/loss_plot.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace cartridge {

namespace {

constexpr double kWidth = 720;        // px, whole chart
constexpr double kPanelHeight = 240;  // px per panel
constexpr double kLeft = 70;          // px margin for y tick labels
constexpr double kRight = 20;
constexpr double kTop = 34;  // px margin for the title
constexpr double kBottom = 30;
constexpr int kTargetTicks = 5;

std::string escape_xml(const std::string& text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// A "nice" tick step (1, 2 or 5 times a power of ten) giving about kTargetTicks ticks over `span`.
double tick_step(double span) {
  if (!(span > 0)) return 1;
  const double raw = span / kTargetTicks;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double normalized = raw / magnitude;
  const double nice = normalized < 1.5 ? 1 : normalized < 3.5 ? 2 : normalized < 7.5 ? 5 : 10;
  return nice * magnitude;
}

std::string format_tick(double value, double step) {
  if (std::abs(value) < step * 1e-9) value = 0;
  const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
  return fmt::format("{:.{}f}", value, std::min(decimals, 6));
}

struct Range {
  double low = std::numeric_limits<double>::infinity();
  double high = -std::numeric_limits<double>::infinity();
  bool valid() const { return low <= high; }
  void add(double value) {
    low = std::min(low, value);
    high = std::max(high, value);
  }
  // Widens to whole ticks (and to a non-empty span).
  double round_out() {
    if (high - low < 1e-12) {
      const double pad = std::abs(high) > 0 ? std::abs(high) * 0.05 : 1;
      low -= pad;
      high += pad;
    }
    const double step = tick_step(high - low);
    low = std::floor(low / step) * step;
    high = std::ceil(high / step) * step;
    return step;
  }
};

void render_panel(const PlotPanel& panel, const Range& shared_x, double x_step, double top,
                  const std::string& x_label, bool last, std::string& svg) {
  const double plot_left = kLeft, plot_right = kWidth - kRight;
  const double plot_top = top + kTop, plot_bottom = top + kPanelHeight - kBottom;
  svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
                     plot_left, top + 20, escape_xml(panel.title));
  Range y;
  for (const PlotSeries& series : panel.series) {
    for (const auto& [x, value] : series.points) {
      if (std::isfinite(x) && std::isfinite(value)) y.add(value);
    }
  }
  svg += fmt::format(
      "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" "
      "stroke=\"#999\"/>\n",
      plot_left, plot_top, plot_right - plot_left, plot_bottom - plot_top);
  if (!y.valid() || !shared_x.valid()) {
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"12\" fill=\"#666\">no data</text>\n",
                       (plot_left + plot_right) / 2 - 20, (plot_top + plot_bottom) / 2);
    return;
  }
  const double y_step = y.round_out();
  const auto to_x = [&](double x) {
    return plot_left + (x - shared_x.low) / (shared_x.high - shared_x.low) * (plot_right - plot_left);
  };
  const auto to_y = [&](double value) {
    return plot_bottom - (value - y.low) / (y.high - y.low) * (plot_bottom - plot_top);
  };
  // Grid and tick labels.
  for (double tick = y.low; tick <= y.high + y_step * 1e-6; tick += y_step) {
    svg += fmt::format("<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#eee\"/>\n",
                       plot_left, plot_right, to_y(tick), to_y(tick));
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"11\" text-anchor=\"end\">{}</text>\n",
                       plot_left - 6, to_y(tick) + 4, format_tick(tick, y_step));
  }
  for (double tick = shared_x.low; tick <= shared_x.high + x_step * 1e-6; tick += x_step) {
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n",
                       to_x(tick), plot_bottom + 15, format_tick(tick, x_step));
  }
  svg += fmt::format(
      "<text transform=\"translate({:.1f},{:.1f}) rotate(-90)\" font-size=\"12\" "
      "text-anchor=\"middle\">{}</text>\n",
      16.0, (plot_top + plot_bottom) / 2, escape_xml(panel.y_label));
  if (last) {
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n",
                       (plot_left + plot_right) / 2, plot_bottom + 28, escape_xml(x_label));
  }
  // Lines, then a legend in the top-right corner.
  double legend_y = plot_top + 14;
  for (const PlotSeries& series : panel.series) {
    std::string points;
    for (const auto& [x, value] : series.points) {
      if (!std::isfinite(x) || !std::isfinite(value)) continue;
      points += fmt::format("{:.1f},{:.1f} ", to_x(x), to_y(value));
    }
    if (points.empty()) continue;
    svg += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
                       escape_xml(series.color), points);
    if (series.points.size() <= 40) {  // few points (evaluations): mark each one
      for (const auto& [x, value] : series.points) {
        if (!std::isfinite(x) || !std::isfinite(value)) continue;
        svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"{}\"/>\n", to_x(x),
                           to_y(value), escape_xml(series.color));
      }
    }
    svg += fmt::format(
        "<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" "
        "stroke-width=\"2\"/>\n",
        plot_right - 150, plot_right - 130, legend_y - 4, legend_y - 4, escape_xml(series.color));
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"11\">{}</text>\n", plot_right - 125,
                       legend_y, escape_xml(series.name));
    legend_y += 15;
  }
}

}  // namespace

std::string render_line_chart_svg(const std::vector<PlotPanel>& panels, const std::string& x_label) {
  const double height = kPanelHeight * static_cast<double>(std::max<size_t>(panels.size(), 1)) + 10;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" viewBox=\"0 0 {:.0f} "
      "{:.0f}\" "
      "font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      kWidth, height, kWidth, height);
  // One x range for all panels so steps line up vertically.
  Range x;
  for (const PlotPanel& panel : panels) {
    for (const PlotSeries& series : panel.series) {
      for (const auto& [position, value] : series.points) {
        if (std::isfinite(position) && std::isfinite(value)) x.add(position);
      }
    }
  }
  const double x_step = x.valid() ? x.round_out() : 1;
  for (size_t index = 0; index < panels.size(); ++index) {
    render_panel(panels[index], x, x_step, kPanelHeight * static_cast<double>(index), x_label,
                 index + 1 == panels.size(), svg);
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace cartridge
