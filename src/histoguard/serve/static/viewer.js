// histoguard viewer: the slide (DeepZoom), overlay layers of its prediction, the tile under a
// click, the top tiles by attention, and the slide list with decisions and flags.
// Plain JavaScript on the server's JSON endpoints; no build step.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { slide: null, layers: {}, legends: {}, viewer: null };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function getJSON(url, options) {
    const response = await fetch(url, options);
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  function fmt(value, digits) {
    return value === null || value === undefined ? "–" : Number(value).toPrecision(digits || 3);
  }

  function decisionText(prediction) {
    if (!prediction) return "";
    if (prediction.decision === "review") return "review: " + (prediction.reason || "");
    return prediction.decision || prediction.predicted;
  }

  function renderSlides(slides) {
    const list = $("slides");
    list.replaceChildren();
    for (const slide of slides) {
      const p = slide.prediction;
      const item = el("li", { "data-slide": slide.id, title: slide.name },
        el("span", { class: "name" }, slide.id),
        el("span", { class: "decision" + (p && p.decision === "review" ? " review" : "") },
          decisionText(p)));
      if (slide.error) item.append(el("div", { class: "flag" }, slide.error));
      for (const flag of (p ? p.flags : [])) item.append(el("div", { class: "flag" }, flag));
      item.addEventListener("click", () => openSlide(slide.id));
      list.append(item);
    }
  }

  function renderVerdict(prediction) {
    const box = $("verdict");
    box.replaceChildren();
    if (!prediction) { box.className = "muted"; box.textContent = "no prediction for this slide"; return; }
    box.className = "";
    const rows = [
      ["decision", decisionText(prediction)],
      ["most probable", prediction.predicted],
      ["prediction set", "{" + prediction.prediction_set.join(", ") + "}" + (prediction.prediction_set.length ? "" : " (empty)")],
      ["OOD gate p", fmt(prediction.ood_p_value, 2) + (prediction.ood_alpha !== null ? " (alpha " + prediction.ood_alpha + ")" : "")],
      ["out of distribution", prediction.out_of_distribution === null ? "no gate" : (prediction.out_of_distribution ? "yes" : "no")],
    ];
    for (const [cls, p] of Object.entries(prediction.probabilities)) rows.push(["p(" + cls + ")", fmt(p)]);
    for (const [name, v] of Object.entries(prediction.uncertainty)) rows.push([name.replace(/_/g, " "), fmt(v)]);
    const table = el("table", {});
    for (const [k, v] of rows) table.append(el("tr", {}, el("td", {}, k), el("td", {}, v)));
    box.append(table);
    if (prediction.flags.length) {
      const flags = el("ul", { class: "flags" });
      for (const f of prediction.flags) flags.append(el("li", {}, f));
      box.append(flags);
    }
  }

  function renderLegend(legend) {
    const bar = el("div", { class: "bar" });
    bar.style.background = "linear-gradient(to right, " + legend.colors.join(", ") + ")";
    const ticks = el("div", { class: "ticks" });
    for (const [pos, label] of legend.ticks) {
      const tick = el("span", {}, label);
      tick.style.left = (pos * 100) + "%";
      ticks.append(tick);
    }
    const [low, middle, high] = legend.captions;
    return el("div", { class: "legend", "data-layer": legend.name },
      el("div", { class: "title" }, legend.title + (legend.scope === "slide" ? " — one value for the whole slide" : "")),
      bar, ticks,
      el("div", { class: "captions" }, el("span", {}, low), el("span", {}, middle), el("span", {}, high)));
  }

  function renderLegends() {
    const box = $("legends");
    box.replaceChildren();
    for (const name of Object.keys(state.layers)) box.append(renderLegend(state.legends[name]));
  }

  function opacity() { return Number($("opacity").value) / 100; }

  function toggleLayer(name, on) {
    const viewer = state.viewer;
    if (on && !state.layers[name]) {
      state.layers[name] = "loading";
      viewer.addTiledImage({
        tileSource: "/slides/" + state.slide + "/layers/" + name + ".dzi",
        opacity: opacity(),
        success: (event) => { state.layers[name] = event.item; renderLegends(); },
        error: () => { delete state.layers[name]; },
      });
    } else if (!on && state.layers[name]) {
      if (state.layers[name] !== "loading") viewer.world.removeItem(state.layers[name]);
      delete state.layers[name];
      renderLegends();
    }
  }

  function renderLayers(legends) {
    const box = $("layers");
    box.replaceChildren();
    state.legends = {};
    if (!legends.length) { box.className = "muted"; box.textContent = "no overlay layers"; return; }
    box.className = "";
    for (const legend of legends) {
      state.legends[legend.name] = legend;
      const input = el("input", { type: "checkbox", id: "layer-" + legend.name, "data-layer": legend.name });
      input.addEventListener("change", () => toggleLayer(legend.name, input.checked));
      box.append(el("label", { class: "layer", title: legend.title }, input, " " + legend.name.replace("_", " ")));
    }
  }

  function renderTile(info) {
    const box = $("tile-info");
    box.replaceChildren();
    box.className = "";
    const rows = [["tile", "#" + info.index + " of " + info.n_tiles],
      ["level-0 x, y", info.x + ", " + info.y + " (" + info.size + " px)"]];
    if ("attention" in info) {
      rows.push(["attention", fmt(info.attention)]);
      rows.push(["attention rank", info.attention_rank + " of " + info.n_tiles]);
    }
    if ("entropy_nats" in info) rows.push(["predictive entropy", fmt(info.entropy_nats) + " nats"]);
    for (const [cls, p] of Object.entries(info.probabilities || {})) rows.push(["p(" + cls + "), tile alone", fmt(p)]);
    const table = el("table", {});
    for (const [k, v] of rows) table.append(el("tr", {}, el("td", {}, k), el("td", {}, v)));
    box.append(table);
  }

  async function showTileAt(x, y) {
    try {
      renderTile(await getJSON("/slides/" + state.slide + "/tile?x=" + x + "&y=" + y));
    } catch (error) {
      const box = $("tile-info");
      box.className = "muted";
      box.textContent = error.message;
    }
  }

  async function renderGallery() {
    const box = $("gallery");
    box.replaceChildren();
    let top;
    try { top = await getJSON("/slides/" + state.slide + "/top?k=8"); } catch (error) { return; }
    for (const tile of top.tiles) {
      const figure = el("figure", { "data-index": tile.index },
        el("img", { src: "/slides/" + state.slide + "/tiles/" + tile.index + ".jpeg", alt: "tile " + tile.index }),
        el("figcaption", {}, "#" + tile.attention_rank + " · " + fmt(tile.attention)));
      figure.addEventListener("click", () => {
        renderTile(tile);
        const item = state.viewer.world.getItemAt(0);
        const centre = item.imageToViewportCoordinates(tile.x + tile.size / 2, tile.y + tile.size / 2);
        state.viewer.viewport.panTo(centre);
      });
      box.append(figure);
    }
  }

  async function loadPrediction() {
    let body = null;
    try { body = await getJSON("/slides/" + state.slide + "/layers"); } catch (error) { body = null; }
    renderVerdict(body ? body.prediction : null);
    renderLayers(body ? body.layers : []);
    renderLegends();
    if (body) await renderGallery(); else $("gallery").replaceChildren();
  }

  async function openSlide(id) {
    state.slide = id;
    state.layers = {};
    for (const item of document.querySelectorAll("#slides li")) {
      item.classList.toggle("active", item.dataset.slide === id);
    }
    $("tile-info").className = "muted";
    $("tile-info").textContent = "click a tile on the slide to see its scores";
    state.viewer.open("/slides/" + id + ".dzi");
    await loadPrediction();
  }

  async function refreshSlides() {
    const body = await getJSON("/slides");
    renderSlides(body.slides);
    const select = $("model");
    select.replaceChildren(...body.models.map((m) => el("option", { value: m }, m)));
    $("predict-box").hidden = body.models.length === 0;
    return body;
  }

  async function runPredict() {
    const status = $("predict-status");
    status.textContent = "running…";
    try {
      const body = await getJSON("/predict", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ slide: state.slide, model: $("model").value }),
      });
      status.textContent = "done: " + decisionText(body);
      await refreshSlides();
      for (const item of document.querySelectorAll("#slides li")) {
        item.classList.toggle("active", item.dataset.slide === state.slide);
      }
      for (const name of Object.keys(state.layers)) toggleLayer(name, false);
      await loadPrediction();
    } catch (error) {
      status.textContent = "failed: " + error.message;
    }
  }

  async function main() {
    state.viewer = OpenSeadragon({
      id: "view",
      prefixUrl: "/static/openseadragon/images/",
      showNavigator: true,
      showRotationControl: false,
      gestureSettingsMouse: { clickToZoom: false },
      maxZoomPixelRatio: 2,
    });
    window.hgViewer = state.viewer;
    window.hgState = state;
    state.viewer.addHandler("canvas-click", (event) => {
      if (!event.quick || !state.slide || !state.viewer.world.getItemCount()) return;
      const point = state.viewer.viewport.pointFromPixel(event.position);
      const image = state.viewer.world.getItemAt(0).viewportToImageCoordinates(point);
      showTileAt(Math.round(image.x), Math.round(image.y));
    });
    $("opacity").addEventListener("input", () => {
      for (const item of Object.values(state.layers)) if (item !== "loading") item.setOpacity(opacity());
    });
    $("predict").addEventListener("click", runPredict);
    const body = await refreshSlides();
    if (body.slides.length) await openSlide(body.slides[0].id);
  }

  main();
})();
