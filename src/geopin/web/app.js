/* geopin page: send photos to /api/predict, one answer per photo in a list, the shown one drawn on the
 * offline world map. All URLs are relative to the page, so the page works behind a path prefix too.
 * A token (needed when the server is bound beyond loopback) is read from ?token= in the page URL.
 *
 * The main answer is the most probable place (`most_likely`): the big pin and the "Most likely" line.
 * The best guess (`lat`, `lon`: least expected distance, what maximises the expected score) is a second
 * marker, drawn only when it lies elsewhere. Everything is drawn at longitudes within 180 degrees of the
 * main answer, so an answer near the antimeridian is drawn the short way (basemap.js draws world copies). */
(function () {
  "use strict";

  var TOKEN = new URLSearchParams(window.location.search).get("token");
  var CELL_CHUNK = 300; // tokens per /api/cells request: keeps each URL short
  var SAME_PLACE_KM = 1; // best guess closer than this to the most likely place: one marker, not two
  var HISTORY_KEY = "geopin.history.v1";
  var HISTORY_MAX = 50; // answers kept in the browser
  var GEOSCORE_KM = 1492.7; // GeoGuessr's scale: 5000 points at the spot, 1/e of it at 1492.7 km
  // the main answer's pin: the page's one big symbol
  var PIN_SVG = '<svg viewBox="0 0 30 40" width="30" height="40" aria-hidden="true"><path d="M15 1.5A13 13 0 0 0 2 14.5c0 9.5 13 24 13 24s13-14.5 13-24A13 13 0 0 0 15 1.5z" ' +
    'fill="#d1402f" stroke="#fff" stroke-width="2.5"/><circle cx="15" cy="14.5" r="5" fill="#fff"/></svg>';
  var $ = function (id) { return document.getElementById(id); };
  var countryNames = window.Intl && Intl.DisplayNames ? new Intl.DisplayNames(["en"], { type: "region" }) : null;

  var map = null;
  var answerLayer = null; // what is drawn for the shown answer
  var truthLayer = null; // the true location the user clicked, and lines to the answer
  var legend = null;
  var items = []; // one per photo, newest batch first: {id, name, size, time, file, status, res, error, truth, overlays}
  var shown = null; // the item (or crafted answer) on the map
  var photoItem = null; // the item whose photo is in the photo box
  var showSeq = 0; // bumps when another answer is shown: late region/explanation replies are dropped
  var queue = []; // items waiting for /api/predict, sent one at a time
  var busy = false;
  var explainAvailable = true; // until /api/health says otherwise
  var explainAbort = null;
  var exportUrls = [];
  var nextId = 1;

  function authHeaders() {
    return TOKEN ? { Authorization: "Bearer " + TOKEN } : {};
  }

  function setStatus(state, text) {
    var el = $("status");
    el.dataset.state = state;
    el.textContent = text;
  }

  function pct(p) {
    if (p >= 0.995) return "99%+";
    if (p < 0.005) return "<1%";
    return Math.round(100 * p) + "%";
  }

  function km(d) {
    return d >= 10 ? Math.round(d).toLocaleString("en") + " km" : d.toFixed(1) + " km";
  }

  /** "480 B", "12 kB", "3.4 MB": a small file must not read "0 kB". */
  function fileSize(bytes) {
    if (bytes < 1000) return bytes + " B";
    if (bytes < 1e6) return (bytes < 1e4 ? (bytes / 1e3).toFixed(1) : Math.round(bytes / 1e3)) + " kB";
    return (bytes / 1e6).toFixed(1) + " MB";
  }

  function geoScore(d) {
    return 5000 * Math.exp(-d / GEOSCORE_KM);
  }

  function countryName(p) {
    if (p.country_name) return p.country_name;
    if (!p.country) return "";
    try { return (countryNames && countryNames.of(p.country)) || p.country; } catch (e) { return p.country; }
  }

  function coords(p) {
    return p.lat.toFixed(2) + ", " + p.lon.toFixed(2);
  }

  /** A place in words: "near Nara, Japan" / "Japan (34.68, 135.80)" / "34.68, 135.80". */
  function place(p) {
    var town = p.near || p.name;
    var cc = countryName(p);
    var words = [town ? "near " + town : "", cc].filter(Boolean).join(", ");
    return words ? words + " (" + coords(p) + ")" : coords(p);
  }

  /** The answer's main place: the most probable one, or the guess for answers from before `most_likely`. */
  function mainPlace(res) {
    return res.most_likely || { lat: res.lat, lon: res.lon, country: res.country, country_name: res.country_name };
  }

  function guessDiffers(res) {
    var m = mainPlace(res);
    return geopinHaversineKm(m.lat, m.lon, res.lat, res.lon) > SAME_PLACE_KM;
  }

  /** Read the server's error body ({"error", "detail"}) into one sentence. */
  function errorText(resp, body) {
    var why = body && (body.detail || body.error || body.message);
    if (typeof why !== "string") why = why ? JSON.stringify(why) : resp.statusText;
    if (resp.status === 401) why += " (open the page as ?token=YOUR_TOKEN)";
    return "HTTP " + resp.status + ": " + why;
  }

  function readJson(resp) {
    return resp.text().then(function (t) {
      try { return JSON.parse(t); } catch (e) { return { detail: t.slice(0, 200) }; }
    });
  }

  // ------------------------------------------------------------------ start-up

  function init() {
    geopinLoadBorders(function (message) { setStatus("error", message); })
      .then(function (topo) {
        map = geopinBaseMap("map", topo);
        window.geopinMap = map; // for tests and the browser console
        map.on("click", function (e) { setTruth(e.latlng); });
        loadHistory();
        document.body.dataset.mapReady = "1";
      });
    fetch("api/health", { headers: authHeaders() })
      .then(function (r) { return readJson(r).then(function (b) { return [r, b]; }); })
      .then(function (rb) {
        var el = $("health");
        if (!rb[0].ok) {
          el.textContent = errorText(rb[0], rb[1]);
          el.classList.add("bad");
          return;
        }
        var b = rb[1];
        if (b.explain === false) explainAvailable = false;
        el.textContent = "model ready" + (b.backbone ? ": " + b.backbone : "");
      })
      .catch(function (e) { $("health").textContent = "server not reachable: " + e.message; });

    $("photo").addEventListener("error", photoFailed);
    var input = $("photo-input");
    input.addEventListener("change", function () {
      if (input.files && input.files.length) handleFiles(input.files);
      input.value = ""; // the same photo chosen again is a new request
    });
    var drop = $("drop");
    ["dragenter", "dragover"].forEach(function (ev) {
      drop.addEventListener(ev, function (e) { e.preventDefault(); drop.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (ev) {
      drop.addEventListener(ev, function (e) { e.preventDefault(); drop.classList.remove("over"); });
    });
    // a photo dropped anywhere on the page is taken, and the browser must not navigate away to it
    window.addEventListener("dragover", function (e) { e.preventDefault(); });
    window.addEventListener("drop", function (e) {
      e.preventDefault();
      var files = e.dataTransfer && e.dataTransfer.files;
      if (files && files.length) handleFiles(files);
    });
    window.addEventListener("paste", function (e) {
      var files = e.clipboardData && e.clipboardData.files;
      if (files && files.length) { e.preventDefault(); handleFiles(files); }
    });
    document.querySelectorAll('input[name="view"]').forEach(function (r) {
      r.addEventListener("change", showView);
    });
    $("answers").addEventListener("click", function (e) {
      var li = e.target.closest("li[data-id]");
      var item = li && findItem(Number(li.dataset.id));
      if (item && item.res) showItem(item);
    });
    $("clear-history").addEventListener("click", function () {
      items = items.filter(function (it) { return it.status === "queued" || it.status === "busy"; });
      saveHistory();
      renderList();
    });
  }

  function findItem(id) {
    for (var i = 0; i < items.length; i++) if (items[i].id === id) return items[i];
    return null;
  }

  // ------------------------------------------------------------------ photos in, answers out

  /** Several photos at once: one item each, sent one after the other; the first answer is shown. */
  function handleFiles(fileList) {
    var batch = Array.prototype.slice.call(fileList).map(function (f) {
      return { id: nextId++, name: f.name || "pasted photo", size: f.size, time: new Date().toISOString(), file: f,
        status: "queued", res: null, error: null, truth: null, overlays: null };
    });
    if (!batch.length) return;
    items = batch.concat(items);
    batch.showFirst = true;
    batch.forEach(function (it) { it.batch = batch; queue.push(it); });
    showPhoto(batch[0]);
    clearAnswer();
    renderList();
    pump();
  }

  function pump() {
    if (busy) return;
    var item = queue.shift();
    if (!item) { finishQueue(); return; }
    busy = true;
    item.status = "busy";
    renderList();
    setStatus("busy", "Looking at " + (item.batch.length > 1
      ? "photo " + (item.batch.indexOf(item) + 1) + " of " + item.batch.length + "…" : "the photo…"));
    var form = new FormData();
    form.append("photo", item.file, item.name);
    fetch("api/predict", { method: "POST", body: form, headers: authHeaders() })
      .then(function (r) { return readJson(r).then(function (b) { return [r, b]; }); })
      .then(function (rb) {
        var resp = rb[0], res = Array.isArray(rb[1]) ? rb[1][0] : rb[1];
        if (!resp.ok || !res || res.error) {
          item.status = "error";
          item.error = resp.ok ? String(res && (res.detail || res.error)) : errorText(resp, res);
          return;
        }
        item.status = "done";
        item.res = res;
        saveHistory();
        if (item.batch.showFirst) { // the first answer of a batch is shown; the others wait in the list
          item.batch.showFirst = false;
          return showItem(item, { explainLater: true });
        }
      })
      .catch(function (e) {
        item.status = "error";
        item.error = "The request failed: " + e.message;
      })
      .then(function () {
        busy = false;
        renderList();
        pump();
      });
  }

  /** All photos answered: say so (the last batch's errors included), then explain the shown photo. */
  function finishQueue() {
    var batch = items.length && items[0].batch;
    if (!batch) return;
    var failed = batch.filter(function (it) { return it.status === "error"; });
    if (shown && shown.regionError) setStatus("error", shown.regionError);
    else if (batch.length === 1 && failed.length) setStatus("error", failed[0].error);
    else if (failed.length) {
      setStatus("error", failed.length + " of " + batch.length + " photos got no answer; first: " +
        failed[0].name + ": " + failed[0].error);
    } else setStatus("done", batch.length > 1 ? "Done: " + batch.length + " photos. Click one to see it on the map." : "Done.");
    if (shown && shown.file) explain(shown);
  }

  function renderList() {
    var ol = $("answers");
    ol.innerHTML = "";
    items.forEach(function (it) {
      var li = document.createElement("li");
      li.dataset.id = it.id;
      li.dataset.status = it.status;
      li.className = "answer-item" + (shown === it ? " shown" : "");
      var where = it.res ? place(mainPlace(it.res)) + ", " + pct(mainPlace(it.res).probability || 0)
        : it.status === "error" ? it.error : it.status === "busy" ? "looking…" : "waiting";
      var name = document.createElement("span");
      name.className = "item-name";
      name.textContent = it.name;
      var what = document.createElement("span");
      what.className = "item-where";
      what.textContent = where + (it.truth && it.res ? " · " + km(truthKm(it)) + " off" : "");
      li.appendChild(name);
      li.appendChild(what);
      if (it.res) li.title = "show this answer on the map";
      ol.appendChild(li);
    });
    $("answers-box").hidden = !items.length;
    updateExports();
  }

  function showPhoto(item) {
    photoItem = item;
    if (item.file && !item.url && !needsPreview(item.file) && !item.browserFailed) item.url = URL.createObjectURL(item.file);
    if (item.file && item.url) {
      $("photo").src = (item.overlays && item.overlays[currentView()]) || item.url;
      $("photo").hidden = false;
    } else {
      $("photo").removeAttribute("src");
      $("photo").hidden = true;
      if (item.file) loadPreview(item);
    }
    $("photo").dataset.preview = item.previewed ? "server" : "";
    $("photo-name").textContent = item.name + " (" + fileSize(item.size || 0) + ")" + (item.file ? "" : ", from your history") +
      (item.previewing ? ", preparing a preview…" : item.previewError ? " (no preview: " + item.previewError + ")" : "");
    $("photo-box").hidden = false;
  }

  /** Browsers (Chromium) cannot show HEIC/HEIF: those photos are shown from the server's JPEG (/api/preview). */
  function needsPreview(file) {
    return /^image\/(heic|heif)/i.test(file.type || "") || /\.(heic|heif|hif)$/i.test(file.name || "");
  }

  /** The photo as a small JPEG made by the server: for a HEIC/HEIF photo, or any the browser failed to show. */
  function loadPreview(item) {
    if (item.previewing || item.previewed || item.previewError) return;
    item.previewing = true;
    var form = new FormData();
    form.append("photo", item.file, item.name);
    fetch("api/preview", { method: "POST", body: form, headers: authHeaders() })
      .then(function (r) {
        if (!r.ok) return readJson(r).then(function (b) { throw new Error(errorText(r, b)); });
        return r.blob();
      })
      .then(function (blob) {
        if (item.url) URL.revokeObjectURL(item.url);
        item.url = URL.createObjectURL(blob);
        item.previewed = true;
        if (item.overlays) item.overlays.photo = item.url;
      })
      .catch(function (e) { item.previewError = e.message; })
      .then(function () {
        item.previewing = false;
        if (photoItem === item) showPhoto(item);
      });
  }

  /** A photo the browser could not decode after all (a format it does not know): ask the server for a preview. */
  function photoFailed() {
    var it = photoItem;
    if (it && it.file && !it.previewed && $("photo").getAttribute("src") === it.url) {
      if (it.url) URL.revokeObjectURL(it.url);
      it.url = null;
      it.browserFailed = true;
      showPhoto(it);
    }
  }

  function clearAnswer() {
    showSeq++;
    shown = null;
    $("answer").hidden = true;
    $("explain-controls").hidden = true;
    if (answerLayer) { answerLayer.remove(); answerLayer = null; }
    if (truthLayer) { truthLayer.remove(); truthLayer = null; }
    updateLegend(null);
  }

  /** Put one item's answer on the page and the map (and its explanation, once the queue is idle). */
  function showItem(item, opts) {
    if (explainAbort) { explainAbort.abort(); explainAbort = null; }
    showPhoto(item);
    $("explain-controls").hidden = !item.overlays;
    if (item.overlays) disableViews(item.overlays);
    var p = showAnswer(item.res, item);
    renderList();
    if (!(opts && opts.explainLater) && item.file && !busy) explain(item);
    return p;
  }

  // ------------------------------------------------------------------ one answer on the map

  /** Draw an answer (as /api/predict gives it): words, markers, regions. Resolves when the regions are drawn. */
  function showAnswer(res, item) {
    clearAnswer();
    var seq = showSeq;
    shown = item || { res: res, truth: null };
    shown.regionError = null;
    window.geopinLast = res; // the answer as received: for tests and the curious (browser console)
    var main = mainPlace(res);
    var ref = main.lon; // every longitude drawn within 180 degrees of this: the short way round
    var at = function (p) { return [p.lat, geopinNearLon(p.lon, ref)]; };
    var differs = guessDiffers(res);

    $("likely-line").textContent = "Most likely: " + place(main) +
      (main.probability !== undefined ? ", " + pct(main.probability) + " of the probability" : "");
    $("guess-line").textContent = differs
      ? "Best guess (least expected distance, the ring marker): " + place(res) + ", " +
        km(geopinHaversineKm(main.lat, main.lon, res.lat, res.lon)) + " from the most likely place"
      : "The best guess (least expected distance) is the same place.";
    $("summary").textContent = res.summary || "";
    var tbody = $("within").querySelector("tbody");
    tbody.innerHTML = "";
    Object.keys(res.within_km || {}).forEach(function (r) {
      var p = res.within_km[r];
      var tr = document.createElement("tr");
      tr.innerHTML = "<td>" + Number(r).toLocaleString("en") + " km</td><td class=\"bar\"><span></span></td><td>" + pct(p) + "</td>";
      tr.querySelector(".bar span").style.width = Math.max(0.5, 100 * p) + "%";
      tbody.appendChild(tr);
    });
    var topk = $("topk");
    topk.innerHTML = "";
    (res.top_k || []).forEach(function (p) {
      var li = document.createElement("li");
      li.textContent = place(p) + ": " + pct(p.probability) + (p.is_guess ? " (holds the best guess)" : "");
      topk.appendChild(li);
    });
    showEvidence(res.evidence || []);

    answerLayer = L.layerGroup().addTo(map);
    var drawn = { likely: true, guess: differs };
    // places the evidence named (a town read on a sign): a blue square each, with what was read
    (res.evidence || []).forEach(function (e) {
      (e.places || []).slice(0, 3).forEach(function (s) {
        drawn.evidence = true;
        L.marker(at(s), {
          icon: L.divIcon({ className: "evidence-marker", iconSize: [14, 14] }), title: "read: " + e.read,
        }).bindTooltip("read \u201c" + e.read + "\u201d: " + s.name + (e.weight > 0 ? "" : " (not weighed)")).addTo(answerLayer);
      });
    });
    var pts = [at(main), at(res)];
    // top-k places: circle AREA proportional to probability, so the eye reads mass correctly
    var pmax = Math.max.apply(null, (res.top_k || [{ probability: 1 }]).map(function (p) { return p.probability; }));
    (res.top_k || []).forEach(function (p) {
      drawn.topk = true;
      var radius = 6 + 22 * Math.sqrt(p.probability / (pmax || 1));
      L.circleMarker(at(p), {
        radius: radius, color: "#7a2e9c", weight: 2, fillColor: "#7a2e9c", fillOpacity: 0.25, className: "topk-circle",
      }).bindTooltip(place(p) + ": " + pct(p.probability)).addTo(answerLayer);
      pts.push(at(p));
    });
    if (differs) {
      L.polyline([at(main), at(res)], {
        color: "#1d2430", weight: 1.5, dashArray: "3 5", className: "guess-link", interactive: false,
      }).addTo(answerLayer);
      L.marker(at(res), {
        icon: L.divIcon({ className: "guess-marker", iconSize: [18, 18] }),
        title: "best guess (least expected distance)", zIndexOffset: 900,
      }).bindTooltip("Best guess (least expected distance): " + place(res)).addTo(answerLayer);
    }
    L.marker(at(main), {
      icon: L.divIcon({ className: "likely-marker", html: PIN_SVG, iconSize: [30, 40], iconAnchor: [15, 40], tooltipAnchor: [0, -30] }),
      title: "most likely place", zIndexOffset: 1000,
    }).bindTooltip("Most likely: " + place(main)).addTo(answerLayer);

    var exifLine = $("exif-line");
    exifLine.textContent = "";
    if (res.exif_gps && isFinite(res.exif_gps.lat) && isFinite(res.exif_gps.lon)) {
      drawn.exif = true;
      var e = res.exif_gps;
      var d = geopinHaversineKm(e.lat, e.lon, res.lat, res.lon);
      L.polyline([at(e), at(res)], {
        color: "#1b8a4a", weight: 2, dashArray: "6 6", className: "exif-line", interactive: false,
      }).addTo(answerLayer);
      L.marker(at(e), {
        icon: L.divIcon({ className: "exif-marker", iconSize: [18, 18] }),
        title: "EXIF GPS", zIndexOffset: 800,
      }).bindTooltip("EXIF GPS: " + km(d) + " from the guess",
        { permanent: true, direction: "auto", className: "exif-tip" }).addTo(answerLayer);
      exifLine.textContent = "The photo's EXIF says " + e.lat.toFixed(4) + ", " + e.lon.toFixed(4) +
        ": " + km(d) + " from the guess (the guess never uses it).";
      pts.push(at(e));
    } else if (res.exif_gps_error) {
      exifLine.textContent = "EXIF GPS unreadable: " + res.exif_gps_error;
    }
    $("answer").hidden = false;
    updateLegend(drawn);
    fitTo(L.latLngBounds(pts));
    drawTruth();
    return drawRegions(res, seq, ref, pts, drawn);
  }

  /** Fit the view to `bounds`, cut at Mercator's +-85 degrees (a polar cell would else ask for no view at all). */
  function fitTo(bounds) {
    var clamp = function (lat) { return Math.max(-85, Math.min(85, lat)); };
    var b = L.latLngBounds([clamp(bounds.getSouth()), bounds.getWest()], [clamp(bounds.getNorth()), bounds.getEast()]);
    // on a narrow map (a phone) the legend spans most of the top: keep the answer out from under it
    var top = legend && map.getSize().x < 600 ? legend.getContainer().offsetHeight + 10 : 0;
    map.fitBounds(b.pad(0.1), { maxZoom: 6, animate: false, paddingTopLeft: [0, top] });
  }

  /** What the evidence sources read and where it points, as in the JSON's `evidence` and the words. */
  function showEvidence(list) {
    var ul = $("evidence-list");
    ul.innerHTML = "";
    list.forEach(function (e) {
      var li = document.createElement("li");
      var effect = e.weight > 0
        ? " (" + pct(e.probability_before) + " \u2192 " + pct(e.probability_after) + " there)"
        : " (not weighed: this source has not earned weight on held-out photographers)";
      li.textContent = e.source + ": read \u201c" + e.read + "\u201d \u2192 " + e.points_to + effect;
      li.className = e.weight > 0 ? "counted" : "ignored";
      ul.appendChild(li);
    });
    $("evidence").hidden = !list.length;
  }

  /** A GeoJSON feature moved by whole turns of longitude so its centre lies within 180 degrees of `ref`. */
  function nearFeature(f, ref) {
    var g = f.geometry;
    if (g.type === "Point") {
      return { type: "Feature", properties: f.properties, geometry: { type: "Point", coordinates: [geopinNearLon(g.coordinates[0], ref), g.coordinates[1]] } };
    }
    var ring = g.coordinates[0];
    var centre = f.properties.centre ? f.properties.centre[0]
      : ring.reduce(function (a, p) { return a + p[0]; }, 0) / ring.length;
    var shift = geopinNearLon(centre, ref) - centre;
    if (!shift) return f;
    return { type: "Feature", properties: f.properties, geometry: { type: "Polygon", coordinates: g.coordinates.map(function (r) {
      return r.map(function (p) { return [p[0] + shift, p[1]]; });
    }) } };
  }

  /** The 50 % and 90 % regions as S2 cell polygons, from /api/cells (the 90 % set holds the 50 % one);
   * then the view is fitted to the whole 90 % region, not only to the top places. */
  function drawRegions(res, seq, ref, pts, drawn) {
    var regions = res.regions || {};
    var r50 = regions["50%"] || [], r90 = regions["90%"] || [];
    var inner = {};
    r50.forEach(function (t) { inner[t] = true; });
    var all = Array.from(new Set(r90.concat(r50)));
    if (!all.length) return Promise.resolve();
    var chunks = [];
    for (var i = 0; i < all.length; i += CELL_CHUNK) chunks.push(all.slice(i, i + CELL_CHUNK));
    return Promise.all(chunks.map(function (c) {
      return fetch("api/cells?tokens=" + encodeURIComponent(c.join(",")), { headers: authHeaders() })
        .then(function (r) { return readJson(r).then(function (b) { return [r, b]; }); })
        .then(function (rb) {
          if (!rb[0].ok) throw new Error("cells: " + errorText(rb[0], rb[1]));
          return rb[1].features || [];
        });
    })).then(function (lists) {
      if (seq !== showSeq || !answerLayer) return;
      var feats = [].concat.apply([], lists).map(function (f) { return nearFeature(f, ref); });
      var bounds = L.latLngBounds(pts);
      // 90 % first (underneath), then 50 % on top
      [false, true].forEach(function (in50) {
        var fc = { type: "FeatureCollection", features: feats.filter(function (f) { return !!inner[f.properties.token] === in50; }) };
        if (!fc.features.length) return;
        drawn[in50 ? "r50" : "r90"] = true;
        // a region is cells of one S2 level, often hundreds of them: thin edges, or the grid hides the fill
        var thin = fc.features.length > 100 ? 0.5 : 1;
        var layer = L.geoJSON(fc, {
          style: function () {
            return in50
              ? { className: "region-50", color: "#b35900", weight: thin, fillColor: "#e67e22", fillOpacity: 0.45 }
              : { className: "region-90", color: "#c9a100", weight: 0.8 * thin, fillColor: "#f1c40f", fillOpacity: 0.25 };
          },
          pointToLayer: function (f, latlng) { // a training photo's own spot: a 25 km disc
            return L.circle(latlng, {
              radius: 25000, className: in50 ? "region-50" : "region-90",
              color: in50 ? "#b35900" : "#c9a100", weight: 1, fillColor: in50 ? "#e67e22" : "#f1c40f", fillOpacity: in50 ? 0.45 : 0.25,
            });
          },
          onEachFeature: function (f, layer) {
            layer.bindTooltip((in50 ? "50 %" : "90 %") + " region: " + f.properties.token +
              (f.properties.level !== undefined ? " (S2 level " + f.properties.level + ")" : ""));
          },
        }).addTo(answerLayer);
        layer.eachLayer(function (l) { if (l.getBounds) bounds.extend(l.getBounds()); else bounds.extend(l.getLatLng()); });
      });
      answerLayer.eachLayer(function (l) { if (l instanceof L.Marker || l instanceof L.CircleMarker) l.bringToFront && l.bringToFront(); });
      updateLegend(drawn);
      fitTo(bounds);
      document.body.dataset.regionsDrawn = String(seq);
    }).catch(function (e) {
      // the answer stands without its regions; finishQueue keeps this message rather than "Done."
      if (seq !== showSeq) return;
      if (shown) shown.regionError = "The answer is shown, but its regions could not be drawn: " + e.message;
      setStatus("error", "The answer is shown, but its regions could not be drawn: " + e.message);
    });
  }

  /** The legend lists what is on the map now, nothing else. */
  function updateLegend(drawn) {
    if (legend) { legend.remove(); legend = null; }
    if (!drawn || !map) return;
    var rows = [
      ["likely", "l-likely", "most likely place"],
      ["guess", "l-guess", "best guess (least expected distance)"],
      ["topk", "l-topk", "top places (area = probability)"],
      ["r50", "l-r50", "50 % region"],
      ["r90", "l-r90", "90 % region"],
      ["evidence", "l-evidence", "place read off the photo"],
      ["exif", "l-exif", "EXIF GPS of the photo"],
      ["truth", "l-truth", "true location (your click)"],
    ].filter(function (r) { return drawn[r[0]]; });
    legend = L.control({ position: "topright" });
    legend.onAdd = function () {
      var d = L.DomUtil.create("div", "legend");
      d.innerHTML = rows.map(function (r) { return '<div data-key="' + r[0] + '"><i class="' + r[1] + '"></i>' + r[2] + "</div>"; }).join("");
      return d;
    };
    legend.addTo(map);
    legend.drawn = drawn;
  }

  // ------------------------------------------------------------------ the true location, by a click

  function truthKm(it) {
    var m = mainPlace(it.res);
    return geopinHaversineKm(it.truth.lat, it.truth.lon, m.lat, m.lon);
  }

  /** A click on the map: the photo's true location, for the shown answer; distance and GeoScore in words. */
  function setTruth(latlng) {
    if (!shown || !shown.res) return;
    var lon = ((latlng.lng + 180) % 360 + 360) % 360 - 180; // the clicked world copy does not matter
    shown.truth = { lat: Math.round(latlng.lat * 1e5) / 1e5, lon: Math.round(lon * 1e5) / 1e5 };
    drawTruth();
    saveHistory();
    renderList();
  }

  function drawTruth() {
    if (truthLayer) { truthLayer.remove(); truthLayer = null; }
    var line = $("truth-line");
    if (!shown || !shown.res || !shown.truth) {
      line.textContent = "Know where it was taken? Click that spot on the map to see how far off the answer is.";
      line.classList.remove("set");
      if (legend && legend.drawn && legend.drawn.truth) { legend.drawn.truth = false; updateLegend(legend.drawn); }
      return;
    }
    var res = shown.res, t = shown.truth, main = mainPlace(res);
    var ref = main.lon;
    var tAt = [t.lat, geopinNearLon(t.lon, ref)];
    truthLayer = L.layerGroup().addTo(map);
    L.polyline([tAt, [main.lat, geopinNearLon(main.lon, ref)]], {
      color: "#1f5fbf", weight: 2, className: "truth-line", interactive: false,
    }).addTo(truthLayer);
    L.marker(tAt, { icon: L.divIcon({ className: "truth-marker", iconSize: [16, 16] }), title: "true location", zIndexOffset: 1100 })
      .addTo(truthLayer);
    var dMain = geopinHaversineKm(t.lat, t.lon, main.lat, main.lon);
    var words = "True location " + t.lat.toFixed(3) + ", " + t.lon.toFixed(3) + ": the most likely place is " +
      km(dMain) + " off (GeoScore " + Math.round(geoScore(dMain)).toLocaleString("en") + ")";
    if (guessDiffers(res)) {
      var dGuess = geopinHaversineKm(t.lat, t.lon, res.lat, res.lon);
      words += "; the best guess " + km(dGuess) + " (GeoScore " + Math.round(geoScore(dGuess)).toLocaleString("en") + ")";
    }
    line.textContent = words + ".";
    line.classList.add("set");
    if (legend && legend.drawn) { legend.drawn.truth = true; updateLegend(legend.drawn); }
  }

  // ------------------------------------------------------------------ history and export

  /** The answers, kept in this browser (localStorage) without the photos; the oldest go when it is full. */
  function saveHistory() {
    var keep = items.filter(function (it) { return it.res; }).slice(0, HISTORY_MAX).map(function (it) {
      return { name: it.name, size: it.size, time: it.time, res: it.res, truth: it.truth };
    });
    while (true) {
      try {
        window.localStorage.setItem(HISTORY_KEY, JSON.stringify(keep));
        return;
      } catch (e) {
        if (!keep.length) return; // storage refused entirely (private mode): the page works without a history
        keep.pop();
      }
    }
  }

  function loadHistory() {
    var saved = [];
    try { saved = JSON.parse(window.localStorage.getItem(HISTORY_KEY) || "[]"); } catch (e) { saved = []; }
    if (!Array.isArray(saved)) saved = [];
    items = items.concat(saved.filter(function (h) { return h && h.res && isFinite(h.res.lat); }).map(function (h) {
      return { id: nextId++, name: String(h.name || "photo"), size: h.size || 0, time: h.time, file: null, status: "done",
        res: h.res, error: null, truth: h.truth || null, overlays: null, batch: null };
    }));
    renderList();
  }

  function csvCell(v) {
    if (v === null || v === undefined) return "";
    var s = typeof v === "number" ? String(Math.round(v * 1e6) / 1e6) : String(v);
    return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  /** One row per answered photo: the most likely place, the best guess, the within-km chances, the truth. */
  function answerRows() {
    return items.filter(function (it) { return it.res; }).map(function (it) {
      var r = it.res, m = mainPlace(r);
      var row = {
        file: it.name, time: it.time,
        most_likely_lat: m.lat, most_likely_lon: m.lon, most_likely_place: m.near || m.name || "",
        most_likely_country: m.country || "", most_likely_probability: m.probability,
        guess_lat: r.lat, guess_lon: r.lon, guess_country: r.country || "",
        true_lat: it.truth ? it.truth.lat : null, true_lon: it.truth ? it.truth.lon : null,
        km_most_likely: null, geoscore_most_likely: null, km_guess: null, geoscore_guess: null,
        summary: r.summary || "",
      };
      Object.keys(r.within_km || {}).forEach(function (k) { row["within_" + k + "km"] = r.within_km[k]; });
      if (it.truth) {
        row.km_most_likely = geopinHaversineKm(it.truth.lat, it.truth.lon, m.lat, m.lon);
        row.geoscore_most_likely = geoScore(row.km_most_likely);
        row.km_guess = geopinHaversineKm(it.truth.lat, it.truth.lon, r.lat, r.lon);
        row.geoscore_guess = geoScore(row.km_guess);
      }
      return row;
    });
  }

  function updateExports() {
    exportUrls.forEach(function (u) { URL.revokeObjectURL(u); });
    var rows = answerRows();
    var cols = [];
    rows.forEach(function (r) { Object.keys(r).forEach(function (k) { if (cols.indexOf(k) < 0) cols.push(k); }); });
    var csv = [cols.join(",")].concat(rows.map(function (r) {
      return cols.map(function (c) { return csvCell(r[c]); }).join(",");
    })).join("\r\n") + "\r\n";
    var geo = {
      type: "FeatureCollection",
      features: rows.map(function (r) {
        var props = {};
        Object.keys(r).forEach(function (k) { if (r[k] !== null) props[k] = r[k]; });
        return { type: "Feature", geometry: { type: "Point", coordinates: [r.most_likely_lon, r.most_likely_lat] }, properties: props };
      }),
    };
    exportUrls = [
      URL.createObjectURL(new Blob([csv], { type: "text/csv" })),
      URL.createObjectURL(new Blob([JSON.stringify(geo, null, 1)], { type: "application/geo+json" })),
    ];
    $("export-csv").href = exportUrls[0];
    $("export-geojson").href = exportUrls[1];
  }

  // ------------------------------------------------------------------ explanations (optional)

  function explain(item) {
    if (!explainAvailable || !item.file || item.overlays || item.explaining) return;
    if (explainAbort) explainAbort.abort(); // an explanation nobody looks at any more is not waited for
    var abort = window.AbortController ? new AbortController() : null;
    explainAbort = abort;
    item.explaining = true;
    var form = new FormData();
    form.append("photo", item.file, item.name);
    form.append("target", "guess");
    $("explain-note").textContent = "";
    fetch("api/explain", { method: "POST", body: form, headers: authHeaders(), signal: abort && abort.signal })
      .then(function (r) { return readJson(r).then(function (b) { return [r, b]; }); })
      .then(function (rb) {
        var resp = rb[0], b = rb[1];
        if (resp.status === 501 || resp.status === 404) { explainAvailable = false; return; } // not installed: no toggle
        if (!resp.ok) {
          if (shown !== item) return;
          $("explain-controls").hidden = false;
          $("explain-note").textContent = "No explanation: " + errorText(resp, b);
          disableViews({});
          return;
        }
        var ov = { photo: item.url };
        var g = b.gradcam && b.gradcam.png_base64, o = b.occlusion && b.occlusion.png_base64;
        if (g) ov.gradcam = "data:image/png;base64," + g;
        if (o) ov.occlusion = "data:image/png;base64," + o;
        if (!g && !o) return;
        item.overlays = ov;
        if (shown !== item) return;
        disableViews(ov);
        $("explain-controls").hidden = false;
        var secs = b.seconds && b.seconds.total;
        $("explain-note").textContent = "Warm colours: where the evidence for the guess lies" +
          (secs ? " (computed in " + secs.toFixed(1) + " s)." : ".");
      })
      .catch(function () { /* explanations are an extra (or were cancelled): the answer stands without them */ })
      .then(function () { item.explaining = false; });
  }

  function disableViews(ov) {
    document.querySelectorAll('input[name="view"]').forEach(function (r) {
      r.disabled = r.value !== "photo" && !ov[r.value];
    });
    if (!ov[currentView()]) document.querySelector('input[name="view"][value="photo"]').checked = true;
  }

  function currentView() {
    var r = document.querySelector('input[name="view"]:checked');
    return r ? r.value : "photo";
  }

  function showView() {
    var it = shown && shown.file ? shown : null;
    if (!it) return;
    $("photo").src = (it.overlays && it.overlays[currentView()]) || it.url;
  }

  /** For tests and the console: draw an answer object (as /api/predict returns it) without a photo. */
  window.geopinShowAnswer = function (res) { return showAnswer(res, null); };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
