// A small, dependency-free SVG line chart for training curves (loss per step, held-out KL per evaluation).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace cartridge {

struct PlotSeries {
  std::string name;                               // legend text
  std::vector<std::pair<double, double>> points;  // (x, y), drawn in order; non-finite y values are skipped
  std::string color = "#1f77b4";                  // any SVG colour
};

struct PlotPanel {
  std::string title;
  std::string y_label;
  std::vector<PlotSeries> series;
};

// Renders the panels stacked vertically, sharing `x_label`, as a standalone SVG document (UTF-8 text).
// Axis ranges are padded to round tick values; a panel without finite points shows "no data".
std::string render_line_chart_svg(const std::vector<PlotPanel>& panels, const std::string& x_label);

}  // namespace cartridge
