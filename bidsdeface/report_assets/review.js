// bidsdeface group report: filter, sort, distributions, keyboard review with ratings.
// Offline and self-contained: the data are in the page (#qc-data); every value is shown with
// textContent, never parsed as HTML. Ratings live in localStorage until exported as TSV.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("qc-data").textContent);
  const scans = data.scans;
  const order = { FAIL: 0, WARN: 1, PASS: 2 };
  const storeKey = "bidsdeface-ratings:" + location.pathname;
  const ratings = JSON.parse(localStorage.getItem(storeKey) || "{}");
  let shown = scans.slice();
  let current = -1;
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function value(scan, key) {
    const v = scan.metrics[key];
    return v === null || v === undefined ? null : Number(v);
  }
  function saveRatings() { localStorage.setItem(storeKey, JSON.stringify(ratings)); }
  function ratingOf(scan) { return ratings[scan.scan] || scan.review || null; }

  function fillSelect(id, values) {
    const select = $(id);
    for (const v of Array.from(new Set(values)).sort()) {
      const option = el("option", v || "n/a"); option.value = v; select.appendChild(option);
    }
  }

  function apply() {
    const want = { status: $("f-status").value, subject: $("f-subject").value,
                   session: $("f-session").value, modality: $("f-modality").value };
    shown = scans.filter((s) => Object.keys(want).every((k) => want[k] === "*" || s[k] === want[k]));
    const key = $("sort").value, direction = $("direction").value === "desc" ? -1 : 1;
    shown.sort((a, b) => {
      if (key === "flagged") return order[a.status] - order[b.status] || a.scan.localeCompare(b.scan);
      const x = value(a, key), y = value(b, key);
      if (x === null && y === null) return a.scan.localeCompare(b.scan);
      if (x === null) return 1;
      if (y === null) return -1;
      return direction * (x - y) || a.scan.localeCompare(b.scan);
    });
    renderTable();
    renderPlots();
  }

  function badge(status) { return el("span", status, "badge " + status); }

  function renderTable() {
    const body = $("rows");
    body.replaceChildren();
    for (const scan of shown) {
      const row = el("tr"); row.dataset.scan = scan.scan; row.dataset.status = scan.status;
      const thumb = el("td");
      if (scan.render) {
        const img = el("img"); img.loading = "lazy"; img.src = scan.render; img.width = 160;
        img.alt = "render (face obscured)"; thumb.appendChild(img);
      }
      row.appendChild(thumb);
      const name = el("td");
      const link = el("a", scan.scan); link.href = scan.link || "#"; name.appendChild(link);
      row.appendChild(name);
      const status = el("td"); status.appendChild(badge(scan.status));
      if (scan.withheld) status.appendChild(el("div", "image withheld", "note"));
      row.appendChild(status);
      const reasons = el("td"); for (const r of scan.reasons) reasons.appendChild(el("div", r));
      row.appendChild(reasons);
      for (const key of data.columns) {
        const v = value(scan, key);
        row.appendChild(el("td", v === null ? "n/a" : +v.toFixed(3), "num"));
      }
      const rating = ratingOf(scan);
      row.appendChild(el("td", rating ? rating.rating + " (" + (rating.reviewer || "unnamed") + ")" : "", "rating"));
      row.addEventListener("dblclick", () => openReview(scans.indexOf(scan)));
      body.appendChild(row);
    }
    $("shown").textContent = shown.length + " of " + scans.length + " scan(s) shown";
  }

  function renderPlots() {
    const holder = $("plots");
    holder.replaceChildren();
    const ns = "http://www.w3.org/2000/svg";
    for (const plot of data.plots) {
      const values = shown.map((s) => value(s, plot.key)).filter((v) => v !== null);
      const figure = el("figure", null, "plot");
      figure.appendChild(el("figcaption", plot.label));
      const svg = document.createElementNS(ns, "svg");
      svg.setAttribute("width", "320"); svg.setAttribute("height", "90");
      const low = Math.min(...values, ...plot.thresholds), high = Math.max(...values, ...plot.thresholds);
      const x = (v) => 10 + (300 * (v - low)) / ((high - low) || 1);
      for (const t of plot.thresholds) {
        const line = document.createElementNS(ns, "line");
        line.setAttribute("x1", x(t)); line.setAttribute("x2", x(t));
        line.setAttribute("y1", 5); line.setAttribute("y2", 75); line.setAttribute("class", "threshold");
        svg.appendChild(line);
      }
      shown.forEach((s, i) => {
        const v = value(s, plot.key);
        if (v === null) return;
        const dot = document.createElementNS(ns, "circle");
        dot.setAttribute("cx", x(v)); dot.setAttribute("cy", 10 + ((i * 37) % 60));
        dot.setAttribute("r", 3); dot.setAttribute("class", "dot " + s.status);
        const title = document.createElementNS(ns, "title"); title.textContent = s.scan + ": " + v;
        dot.appendChild(title);
        dot.addEventListener("click", () => openReview(scans.indexOf(s)));
        svg.appendChild(dot);
      });
      const axis = document.createElementNS(ns, "text");
      axis.setAttribute("x", 10); axis.setAttribute("y", 88);
      axis.textContent = low.toFixed(2) + " … " + high.toFixed(2) + " (lines: thresholds)";
      svg.appendChild(axis);
      figure.appendChild(svg);
      holder.appendChild(figure);
    }
  }

  // Review: flagged scans first, whatever the table shows.
  const reviewOrder = scans.map((s, i) => i).sort((a, b) =>
    order[scans[a].status] - order[scans[b].status] || scans[a].scan.localeCompare(scans[b].scan));

  function openReview(index) {
    current = index < 0 ? reviewOrder[0] : index;
    $("review").hidden = false;
    showCurrent();
  }
  function showCurrent() {
    const scan = scans[current];
    $("r-name").textContent = scan.scan;
    $("r-status").replaceChildren(badge(scan.status));
    $("r-position").textContent = (reviewOrder.indexOf(current) + 1) + " / " + scans.length;
    $("r-reasons").replaceChildren(...scan.reasons.map((r) => el("li", r)));
    $("r-render").src = scan.render || ""; $("r-mosaic").src = scan.mosaic || "";
    const rating = ratingOf(scan);
    $("r-rating").textContent = rating ? rating.rating + " by " + (rating.reviewer || "unnamed") : "not rated";
    $("r-comment").value = rating ? rating.comment || "" : "";
    $("r-link").href = scan.link || "#";
  }
  function step(delta) {
    const at = reviewOrder.indexOf(current);
    current = reviewOrder[Math.min(Math.max(at + delta, 0), reviewOrder.length - 1)];
    showCurrent();
  }
  function rate(rating) {
    const scan = scans[current];
    ratings[scan.scan] = { rating: rating, reviewer: $("reviewer").value.trim(),
                           comment: $("r-comment").value, time: new Date().toISOString() };
    saveRatings();
    showCurrent();
    renderTable();
  }
  function exportRatings() {
    const clean = (t) => String(t || "").replace(/[\t\r\n]+/g, " ");
    const lines = ["scan\trating\treviewer\tcomment\ttime"];
    for (const [scan, r] of Object.entries(ratings).sort()) {
      lines.push([scan, r.rating, r.reviewer, r.comment, r.time].map(clean).join("\t"));
    }
    const link = el("a"); link.download = "qc_ratings.tsv";
    link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/tab-separated-values" }));
    document.body.appendChild(link); link.click(); link.remove();
  }

  document.addEventListener("keydown", (event) => {
    if ($("review").hidden) {
      if (event.key === "r" && event.target.tagName !== "INPUT") openReview(-1);
      return;
    }
    if (event.target.tagName === "TEXTAREA" || event.target.tagName === "INPUT") {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    const keys = { ArrowRight: () => step(1), j: () => step(1), ArrowLeft: () => step(-1), k: () => step(-1),
                   p: () => rate("pass"), f: () => rate("fail"), u: () => rate("unsure"),
                   c: () => $("r-comment").focus(), Escape: () => { $("review").hidden = true; } };
    if (keys[event.key]) { event.preventDefault(); keys[event.key](); }
  });
  $("r-comment").addEventListener("change", () => {
    const scan = scans[current], rating = ratings[scan.scan];
    if (rating) { rating.comment = $("r-comment").value; saveRatings(); }
  });
  $("reviewer").value = localStorage.getItem("bidsdeface-reviewer") || "";
  $("reviewer").addEventListener("change", () => localStorage.setItem("bidsdeface-reviewer", $("reviewer").value));
  for (const id of ["f-status", "f-subject", "f-session", "f-modality", "sort", "direction"]) {
    $(id).addEventListener("change", apply);
  }
  $("start-review").addEventListener("click", () => openReview(-1));
  $("export").addEventListener("click", exportRatings);
  $("r-close").addEventListener("click", () => { $("review").hidden = true; });
  fillSelect("f-subject", scans.map((s) => s.subject));
  fillSelect("f-session", scans.map((s) => s.session));
  fillSelect("f-modality", scans.map((s) => s.modality));
  apply();
  document.body.dataset.ready = "true";
})();
