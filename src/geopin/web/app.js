/* geopin page: send a photo to /api/predict, draw the answer on the offline world map.
 * All URLs are relative to the page, so the page works behind a path prefix too.
 * A token (needed when the server is bound beyond loopback) is read from ?token= in the page URL. */
(function () {
  "use strict";

  var TOKEN = new URLSearchParams(window.location.search).get("token");
  var CELL_CHUNK = 300; // tokens per /api/cells request: keeps each URL short
  var $ = function (id) { return document.getElementById(id); };

  var map = null;
  var answerLayer = null;
  var photoUrl = null;
  var overlays = {};
  var requestSeq = 0;
  var explainAvailable = true; // until /api/health says otherwise

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

  function place(p) {
    return p.lat.toFixed(4) + ", " + p.lon.toFixed(4) + (p.country ? " (" + p.country + ")" : "");
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
    fetch("vendor/world-atlas/countries-50m.json")
      .then(function (r) {
        if (!r.ok) throw new Error("country borders: HTTP " + r.status);
        return r.json();
      })
      .catch(function (e) {
        setStatus("error", "The country borders did not load (" + e.message + "); the map is blank.");
        return null;
      })
      .then(function (topo) {
        map = geopinBaseMap("map", topo);
        window.geopinMap = map; // for tests and the browser console
        addLegend();
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

    var input = $("photo-input");
    input.addEventListener("change", function () {
      if (input.files && input.files[0]) handleFile(input.files[0]);
    });
    var drop = $("drop");
    ["dragenter", "dragover"].forEach(function (ev) {
      drop.addEventListener(ev, function (e) { e.preventDefault(); drop.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (ev) {
      drop.addEventListener(ev, function (e) { e.preventDefault(); drop.classList.remove("over"); });
    });
    drop.addEventListener("drop", function (e) {
      var f = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      if (f) handleFile(f);
    });
    // a photo dropped anywhere else must not make the browser navigate away from the page
    window.addEventListener("dragover", function (e) { e.preventDefault(); });
    window.addEventListener("drop", function (e) { e.preventDefault(); });
    document.querySelectorAll('input[name="view"]').forEach(function (r) {
      r.addEventListener("change", showView);
    });
  }

  function addLegend() {
    var legend = L.control({ position: "topright" });
    legend.onAdd = function () {
      var d = L.DomUtil.create("div", "legend");
      d.innerHTML =
        '<div><i class="l-guess"></i>best guess</div>' +
        '<div><i class="l-topk"></i>top places (area = probability)</div>' +
        '<div><i class="l-r50"></i>50 % region</div>' +
        '<div><i class="l-r90"></i>90 % region</div>' +
        '<div><i class="l-exif"></i>EXIF GPS of the photo</div>';
      return d;
    };
    legend.addTo(map);
  }

  // ------------------------------------------------------------------ one photo

  function handleFile(file) {
    var seq = ++requestSeq;
    if (photoUrl) URL.revokeObjectURL(photoUrl);
    photoUrl = URL.createObjectURL(file);
    overlays = { photo: photoUrl };
    $("photo").src = photoUrl;
    $("photo-name").textContent = file.name + " (" + Math.round(file.size / 1024) + " kB)";
    $("photo-box").hidden = false;
    $("answer").hidden = true;
    $("explain-controls").hidden = true;
    document.querySelector('input[name="view"][value="photo"]').checked = true;
    if (answerLayer) { answerLayer.remove(); answerLayer = null; }
    setStatus("busy", "Looking at the photo…");

    var form = new FormData();
    form.append("photo", file, file.name);
    fetch("api/predict", { method: "POST", body: form, headers: authHeaders() })
      .then(function (r) { return readJson(r).then(function (b) { return [r, b]; }); })
      .then(function (rb) {
        if (seq !== requestSeq) return; // a newer photo was chosen meanwhile
        var resp = rb[0], res = Array.isArray(rb[1]) ? rb[1][0] : rb[1];
        if (!resp.ok || !res || res.error) {
          setStatus("error", resp.ok ? String(res && (res.detail || res.error)) : errorText(resp, res));
          return;
        }
        showAnswer(res);
        return drawRegions(res, seq).then(function () {
          if (seq !== requestSeq) return;
          setStatus("done", "Done.");
          explain(file, seq);
        });
      })
      .catch(function (e) {
        if (seq === requestSeq) setStatus("error", "The request failed: " + e.message);
      });
  }

  function showAnswer(res) {
    window.geopinLast = res; // the answer as received: for tests and the curious (browser console)
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
    $("guess-line").textContent = "Best guess: " + place(res) + (res.country_name ? ", " + res.country_name : "") +
      (res.continent ? ", " + res.continent : "");
    var topk = $("topk");
    topk.innerHTML = "";
    (res.top_k || []).forEach(function (p) {
      var li = document.createElement("li");
      li.textContent = (p.name ? p.name + " " : "") + place(p) + ": " + pct(p.probability) + (p.is_guess ? " (best guess)" : "");
      topk.appendChild(li);
    });
    showEvidence(res.evidence || []);

    answerLayer = L.layerGroup().addTo(map);
    // places the evidence named (a town read on a sign): a green square each, with what was read
    (res.evidence || []).forEach(function (e) {
      (e.places || []).slice(0, 3).forEach(function (s) {
        L.marker([s.lat, s.lon], {
          icon: L.divIcon({ className: "evidence-marker", iconSize: [14, 14] }), title: "read: " + e.read,
        }).bindTooltip("read \u201c" + e.read + "\u201d: " + s.name + (e.weight > 0 ? "" : " (not weighed)")).addTo(answerLayer);
      });
    });
    var pts = [[res.lat, res.lon]];
    // top-k places: circle AREA proportional to probability, so the eye reads mass correctly
    var pmax = Math.max.apply(null, (res.top_k || [{ probability: 1 }]).map(function (p) { return p.probability; }));
    (res.top_k || []).forEach(function (p) {
      var radius = 6 + 22 * Math.sqrt(p.probability / (pmax || 1));
      L.circleMarker([p.lat, p.lon], {
        radius: radius, color: "#7a2e9c", weight: 2, fillColor: "#7a2e9c", fillOpacity: 0.25, className: "topk-circle",
      }).bindTooltip(place(p) + ": " + pct(p.probability)).addTo(answerLayer);
      pts.push([p.lat, p.lon]);
    });
    L.marker([res.lat, res.lon], {
      icon: L.divIcon({ className: "guess-marker", iconSize: [22, 22] }),
      title: "best guess", zIndexOffset: 1000,
    }).bindTooltip("Best guess: " + place(res)).addTo(answerLayer);

    var exifLine = $("exif-line");
    exifLine.textContent = "";
    if (res.exif_gps && isFinite(res.exif_gps.lat) && isFinite(res.exif_gps.lon)) {
      var e = res.exif_gps;
      var d = geopinHaversineKm(e.lat, e.lon, res.lat, res.lon);
      L.polyline([[e.lat, e.lon], [res.lat, res.lon]], {
        color: "#1b8a4a", weight: 2, dashArray: "6 6", className: "exif-line", interactive: false,
      }).addTo(answerLayer);
      L.marker([e.lat, e.lon], {
        icon: L.divIcon({ className: "exif-marker", iconSize: [18, 18] }),
        title: "EXIF GPS", zIndexOffset: 900,
      }).bindTooltip("EXIF GPS: " + km(d) + " from the guess",
        { permanent: true, direction: "auto", className: "exif-tip" }).addTo(answerLayer);
      exifLine.textContent = "The photo's EXIF says " + e.lat.toFixed(4) + ", " + e.lon.toFixed(4) +
        ": " + km(d) + " from the guess (the guess never uses it).";
      pts.push([e.lat, e.lon]);
    } else if (res.exif_gps_error) {
      exifLine.textContent = "EXIF GPS unreadable: " + res.exif_gps_error;
    }
    $("answer").hidden = false;
    map.fitBounds(L.latLngBounds(pts).pad(0.25), { maxZoom: 6 });
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

  /** The 50 % and 90 % regions as S2 cell polygons, from /api/cells (the 90 % set holds the 50 % one). */
  function drawRegions(res, seq) {
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
      if (seq !== requestSeq || !answerLayer) return;
      var feats = [].concat.apply([], lists);
      // 90 % first (underneath), then 50 % on top
      [false, true].forEach(function (in50) {
        var fc = { type: "FeatureCollection", features: feats.filter(function (f) { return !!inner[f.properties.token] === in50; }) };
        L.geoJSON(fc, {
          style: function () {
            return in50
              ? { className: "region-50", color: "#b35900", weight: 1, fillColor: "#e67e22", fillOpacity: 0.45 }
              : { className: "region-90", color: "#c9a100", weight: 0.8, fillColor: "#f1c40f", fillOpacity: 0.25 };
          },
          pointToLayer: function (f, latlng) { // a training photo's own spot: a 25 km disc
            return L.circle(latlng, {
              radius: 25000, className: in50 ? "region-50" : "region-90",
              color: in50 ? "#b35900" : "#c9a100", weight: 1, fillColor: in50 ? "#e67e22" : "#f1c40f", fillOpacity: in50 ? 0.45 : 0.25,
            });
          },
          onEachFeature: function (f, layer) {
            layer.bindTooltip((in50 ? "50 %" : "90 %") + " region: " + f.properties.token);
          },
        }).addTo(answerLayer);
      });
      answerLayer.eachLayer(function (l) { if (l instanceof L.Marker || l instanceof L.CircleMarker) l.bringToFront && l.bringToFront(); });
    }).catch(function (e) {
      setStatus("error", "The answer is shown, but its regions could not be drawn: " + e.message);
      throw e;
    });
  }

  // ------------------------------------------------------------------ explanations (optional)

  function explain(file, seq) {
    if (!explainAvailable) return;
    var form = new FormData();
    form.append("photo", file, file.name);
    form.append("target", "guess");
    $("explain-note").textContent = "";
    fetch("api/explain", { method: "POST", body: form, headers: authHeaders() })
      .then(function (r) { return readJson(r).then(function (b) { return [r, b]; }); })
      .then(function (rb) {
        if (seq !== requestSeq) return;
        var resp = rb[0], b = rb[1];
        if (resp.status === 501 || resp.status === 404) return; // explanations not installed: no toggle
        if (!resp.ok) {
          $("explain-controls").hidden = false;
          $("explain-note").textContent = "No explanation: " + errorText(resp, b);
          disableViews();
          return;
        }
        var g = b.gradcam && b.gradcam.png_base64, o = b.occlusion && b.occlusion.png_base64;
        if (g) overlays.gradcam = "data:image/png;base64," + g;
        if (o) overlays.occlusion = "data:image/png;base64," + o;
        if (!g && !o) return;
        disableViews();
        $("explain-controls").hidden = false;
        var secs = b.seconds && b.seconds.total;
        $("explain-note").textContent = "Warm colours: where the evidence for the guess lies" +
          (secs ? " (computed in " + secs.toFixed(1) + " s)." : ".");
      })
      .catch(function () { /* explanations are an extra: the answer stands without them */ });
  }

  function disableViews() {
    document.querySelectorAll('input[name="view"]').forEach(function (r) {
      r.disabled = !overlays[r.value];
    });
  }

  function showView() {
    var v = document.querySelector('input[name="view"]:checked').value;
    $("photo").src = overlays[v] || overlays.photo;
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
