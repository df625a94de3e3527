/* geopin review page (`geopin serve --library DIR`): the proposals of `geopin tag` on the offline map,
 * grouped by trip and day. Accept, reject or drag a photo or a whole group; every decision is saved on the
 * server at once (LIBRARY/.geopin/decisions.json); Write writes through geopin's journal, Undo restores.
 * URLs are relative to the page; a token (needed off loopback) is read from ?token= in the page URL. */
(function () {
  "use strict";

  var TOKEN = new URLSearchParams(window.location.search).get("token");
  var SOURCES = ["time", "gpx", "visual", "manual"];
  var SOURCE_WORDS = {
    time: "time (between the library's geotagged photos)",
    gpx: "GPX track",
    visual: "visual model",
    manual: "moved by you",
  };
  var REASON_WORDS = {
    no_time: "the photo has no time, and no other source could place it",
    no_fix_near_in_time: "no geotagged photo or track point near it in time",
    no_candidate: "no source could place it (no geotagged photo near in time, and the model is unsure)",
    not_an_image: "the file is not a photo geopin can read",
    broken_exif: "its EXIF is broken",
  };
  var SOURCE_SHORT = { time: "time", gpx: "GPX track", visual: "visual model", manual: "moved by you" };
  var WIDE_KM = 2; // discs wider than this are drawn as a dashed outline only
  var LIST_THUMB_PX = 120;
  var POPUP_THUMB_PX = 240;
  var $ = function (id) { return document.getElementById(id); };

  var map = null;
  var plan = null; // GET api/library/plan
  var entries = {}; // rel -> entry
  var decisions = {}; // rel -> {action, lat, lon}
  var layers = {}; // rel -> {marker, circle}
  var pinLayer = null;
  var handle = null; // the selected group's drag handle
  var selectedGroup = null;
  var placing = null; // rel waiting for a click on the map
  var busy = false;
  var renders = 0;

  function authHeaders(extra) {
    var h = extra || {};
    if (TOKEN) h.Authorization = "Bearer " + TOKEN;
    return h;
  }

  function setStatus(state, text) {
    var el = $("status");
    el.dataset.state = state;
    el.textContent = text;
  }

  function readJson(resp) {
    return resp.text().then(function (t) {
      try { return JSON.parse(t); } catch (e) { return { detail: t.slice(0, 200) }; }
    });
  }

  function errorText(resp, body) {
    var why = body && (body.detail || body.error);
    if (typeof why !== "string") why = why ? JSON.stringify(why) : resp.statusText;
    if (resp.status === 401) why += " (open the page as /library?token=YOUR_TOKEN)";
    return "HTTP " + resp.status + ": " + why;
  }

  /** fetch JSON; resolves with the body, rejects with an Error whose message is the server's words. */
  function api(path, body) {
    var opts = { headers: authHeaders() };
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(path, opts).then(function (r) {
      return readJson(r).then(function (b) {
        if (!r.ok) throw new Error(errorText(r, b));
        return b;
      });
    });
  }

  function thumbUrl(rel, px) {
    return "api/library/photo?rel=" + encodeURIComponent(rel) + "&px=" + px +
      (TOKEN ? "&token=" + encodeURIComponent(TOKEN) : "");
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function button(label, cls, title, onClick) {
    var b = el("button", cls, label);
    b.type = "button";
    if (title) b.title = title;
    b.addEventListener("click", function (e) { e.stopPropagation(); onClick(); });
    return b;
  }

  function pct(p) {
    if (p >= 0.995) return "99%+";
    if (p < 0.005) return "<1%";
    return Math.round(100 * p) + "%";
  }

  function km(d) {
    if (d < 1) return Math.round(d * 1000) + " m";
    return d >= 10 ? Math.round(d).toLocaleString("en") + " km" : d.toFixed(1) + " km";
  }

  function baseName(rel) {
    var i = rel.lastIndexOf("/");
    return i < 0 ? rel : rel.slice(i + 1);
  }

  function reasonWords(e) {
    var words = REASON_WORDS[e.reason] || String(e.reason || "unplaced").replace(/_/g, " ");
    return e.problem_detail ? words + " (" + e.problem_detail + ")" : words;
  }

  // ------------------------------------------------------------------ what a photo is now

  function placed(e) { return e.lat !== undefined && e.lat !== null; }

  /** Where the photo is drawn: where the reviewer moved it, else the proposal, else what was written. */
  function position(e) {
    var d = decisions[e.rel];
    if (d && d.action === "move") return [d.lat, d.lon];
    if (placed(e)) return [e.lat, e.lon];
    if (e.written) return [e.written.lat, e.written.lon];
    return null;
  }

  /** time, gpx, visual or manual: the colour of its pin and circle. */
  function sourceOf(e) {
    var d = decisions[e.rel];
    if (d && d.action === "move") return "manual";
    var s = (e.detail && e.detail.chosen) || String(e.source || "").split("+")[0];
    return SOURCES.indexOf(s) >= 0 ? s : "visual";
  }

  function radiusKm(e) {
    var d = decisions[e.rel];
    if (d && d.action === "move") return 0.1;
    return placed(e) ? e.radius_km : 0;
  }

  /** Whether Write would change this photo now (a position already written there is left as it is). */
  function willWrite(e) {
    var d = decisions[e.rel];
    var wants = d ? d.action === "move" || (d.action === "accept" && placed(e)) : $("include-undecided").checked && !!e.write;
    if (!wants || !e.written) return wants;
    var p = position(e);
    return Math.abs(p[0] - e.written.lat) > 1e-6 || Math.abs(p[1] - e.written.lon) > 1e-6;
  }

  function decisionWord(e) {
    var d = decisions[e.rel];
    if (!d) return e.write ? "undecided (sure enough)" : "undecided";
    return d.action === "accept" ? "accepted" : d.action === "reject" ? "rejected" : "moved";
  }

  // ------------------------------------------------------------------ start-up and loading

  function init() {
    $("write").addEventListener("click", write);
    $("undo").addEventListener("click", undo);
    $("include-undecided").addEventListener("change", updateCounts);
    geopinLoadBorders(function (message) { setStatus("error", message); })
      .then(function (topo) {
        map = geopinBaseMap("map", topo);
        map.setMaxZoom(18); // no tiles: any zoom is free, and pins a few metres apart must come apart
        pinLayer = L.layerGroup().addTo(map);
        map.on("click", mapClick);
        addLegend();
        window.geopinMap = map;
        document.body.dataset.mapReady = "1";
        return load(true);
      });
  }

  function load(fit) {
    setStatus("busy", "Loading the plan…");
    return api("api/library/plan").then(function (p) {
      plan = p;
      entries = {};
      p.entries.forEach(function (e) { entries[e.rel] = e; });
      decisions = p.decisions || {};
      render(fit);
      setStatus("done", p.last_run ? runWords(p.last_run) : readyWords());
    }).catch(function (e) {
      setStatus("error", "The plan did not load: " + e.message + (/HTTP 404/.test(e.message)
        ? " (start the server with: geopin serve --library YOUR_PHOTO_FOLDER)" : ""));
    });
  }

  function readyWords() {
    var n = plan.entries.length;
    if (!n) return "Every photo of this library has a position already: nothing to review.";
    return "Review the " + n + " photo" + (n === 1 ? "" : "s") + " without GPS: accept, reject or drag, then Write.";
  }

  function render(fit) {
    $("root").textContent = plan.root;
    $("mode").textContent = plan.write_mode === "exif"
      ? "Write puts the positions into the photos themselves, after a byte-for-byte backup; Undo restores them."
      : "Write puts the positions into XMP sidecars (PHOTO.xmp beside each photo, as darktable and digiKam read " +
        "them); the photos are never touched. Undo restores everything.";
    renderCameras();
    renderList();
    drawAll(fit);
    updateCounts();
    renders++;
    document.body.dataset.planLoaded = String(renders);
    window.geopinLibrary = { plan: plan, decisions: decisions, layers: layers, map: map };
  }

  function renderCameras() {
    var ul = $("cameras");
    ul.innerHTML = "";
    (plan.cameras || []).forEach(function (c) {
      var words = Object.keys(c).filter(function (k) { return c[k] !== null && c[k] !== "" && typeof c[k] !== "object"; })
        .map(function (k) { return k + ": " + c[k]; }).join(", ");
      ul.appendChild(el("li", null, words));
    });
    $("cameras-box").hidden = !(plan.cameras || []).length;
  }

  // ------------------------------------------------------------------ the list, by trip and day

  function renderList() {
    var box = $("groups");
    box.innerHTML = "";
    plan.groups.forEach(function (g) {
      var sec = el("section", "group");
      sec.dataset.group = g.id;
      var head = el("div", "group-head");
      var name = button(g.label + " \u00b7 " + g.rels.length + " photo" + (g.rels.length === 1 ? "" : "s"),
        "group-name", "show this group on the map; drag its square to move the whole group", function () { selectGroup(g.id); });
      head.appendChild(name);
      var acts = el("span", "acts");
      acts.appendChild(button("\u2713 all", "accept", "accept every proposal of this group", function () {
        decide({ group: g.id, action: "accept" });
      }));
      acts.appendChild(button("\u2717 all", "reject", "reject every photo of this group", function () {
        decide({ group: g.id, action: "reject" });
      }));
      head.appendChild(acts);
      sec.appendChild(head);
      var ul = el("ul", "items");
      g.rels.forEach(function (rel) { if (entries[rel]) ul.appendChild(item(entries[rel])); });
      sec.appendChild(ul);
      box.appendChild(sec);
    });
  }

  function item(e) {
    var li = el("li", "item");
    li.dataset.rel = e.rel;
    var img = el("img", "thumb");
    img.loading = "lazy";
    img.alt = "";
    img.src = thumbUrl(e.rel, LIST_THUMB_PX);
    li.appendChild(img);
    var info = el("div", "info");
    li.appendChild(info);
    li.appendChild(el("div", "acts"));
    li.addEventListener("click", function () { focus(e.rel, true); });
    fillItem(li, e);
    return li;
  }

  /** The words and buttons of one photo's line (redone after each decision). */
  function fillItem(li, e) {
    var d = decisions[e.rel];
    li.className = "item src-" + sourceOf(e) + " dec-" + (d ? d.action : "none") + (e.written ? " is-written" : "") +
      (placed(e) || (d && d.action === "move") ? "" : " unplaced");
    var info = li.querySelector(".info");
    info.innerHTML = "";
    info.appendChild(el("span", "name", baseName(e.rel)));
    info.lastChild.title = e.rel;
    var meta = [e.taken ? e.taken.replace("T", " ") : "no time", e.camera || "camera unknown"];
    info.appendChild(el("span", "meta", meta.join(" \u00b7 ")));
    var what;
    if (d && d.action === "move") what = "moved by you to " + d.lat.toFixed(5) + ", " + d.lon.toFixed(5);
    else if (placed(e)) what = e.source + " \u00b7 within " + km(e.radius_km) + " \u00b7 " + pct(e.confidence) + " sure";
    else what = "unplaced: " + reasonWords(e);
    info.appendChild(el("span", "what", what));
    if (placed(e) && e.why_not && !(d && d.action === "move")) info.appendChild(el("span", "why", "not written unreviewed: " + e.why_not));
    var state = el("span", "state", decisionWord(e) + (e.written ? " \u00b7 written" : ""));
    info.appendChild(state);
    var acts = li.querySelector(".acts");
    acts.innerHTML = "";
    if (placed(e)) acts.appendChild(button("\u2713", "accept", "accept this position", function () { decideOne(e.rel, "accept"); }));
    acts.appendChild(button("\u2717", "reject", "reject: do not write this photo", function () { decideOne(e.rel, "reject"); }));
    if (!placed(e)) acts.appendChild(button("\u2316", "place", "place it: click the map where it was taken", function () { startPlacing(e.rel); }));
    if (d) acts.appendChild(button("\u21ba", "clear", "forget the decision (undecided)", function () { decideOne(e.rel, "clear"); }));
  }

  function listItem(rel) {
    return document.querySelector('.item[data-rel="' + CSS.escape(rel) + '"]');
  }

  // ------------------------------------------------------------------ the map

  function addLegend() {
    var legend = L.control({ position: "topright" });
    legend.onAdd = function () {
      var d = L.DomUtil.create("div", "legend");
      d.innerHTML = SOURCES.map(function (s) {
        return '<div title="' + SOURCE_WORDS[s] + '"><i class="lib-pin src-' + s + '"></i>' + SOURCE_SHORT[s] + "</div>";
      }).join("") + '<div><i class="lib-pin dec-reject"></i>rejected</div>' +
        '<div><i class="lib-pin src-time is-written"></i>written</div>' +
        '<div title="the library\'s own photos with GPS"><i class="ref-key"></i>has GPS</div>';
      return d;
    };
    legend.addTo(map);
  }

  function pinIcon(e) {
    var d = decisions[e.rel];
    return L.divIcon({
      className: "lib-pin src-" + sourceOf(e) + " dec-" + (d ? d.action : "none") + (e.written ? " is-written" : "") +
        (selectedGroup && e.group === selectedGroup ? " sel" : ""),
      iconSize: [16, 16],
    });
  }

  function drawAll(fit) {
    pinLayer.clearLayers();
    layers = {};
    if (handle) { handle.remove(); handle = null; }
    drawReferences();
    plan.entries.forEach(draw);
    if (selectedGroup) showHandle();
    if (fit) fitTo(plan.entries);
  }

  /** The library's own geotagged photos, small and grey, joined in time order: the route the time source follows. */
  function drawReferences() {
    var refs = plan.references || [];
    var timed = refs.filter(function (r) { return r.taken; }).map(function (r) { return [r.lat, r.lon]; });
    if (timed.length > 1) {
      L.polyline(timed, { className: "ref-route", color: "#6b7483", weight: 1.2, dashArray: "3 4", interactive: false })
        .addTo(pinLayer);
    }
    refs.forEach(function (r) {
      L.circleMarker([r.lat, r.lon], { radius: 3.5, className: "ref-dot", color: "#fff", weight: 1, fillColor: "#4a5261",
        fillOpacity: 0.9 }).bindTooltip(r.rel + (r.taken ? " \u00b7 " + r.taken.replace("T", " ") : "") + " (has GPS)")
        .addTo(pinLayer);
    });
  }

  /** One photo's pin (draggable: a drag is a move) and the circle of its radius. */
  function draw(e) {
    var pos = position(e);
    if (!pos) return;
    var src = sourceOf(e);
    var r = radiusKm(e);
    // a visual guess covers a region: an outline, not a veil over the map (and no dashes: a dashed circle
    // thousands of km wide costs seconds per frame when zoomed in on a street)
    var wide = r > WIDE_KM;
    var circle = L.circle(pos, {
      radius: Math.max(r, 0.005) * 1000, className: "lib-radius src-" + src, interactive: false,
      weight: wide ? 1.5 : 1, opacity: wide ? 0.55 : 1, fillOpacity: wide ? 0 : 0.12,
    }).addTo(pinLayer);
    var marker = L.marker(pos, { icon: pinIcon(e), draggable: true, title: e.rel, autoPan: true, riseOnHover: true })
      .addTo(pinLayer);
    marker.bindPopup(function () { return popup(e); }, { minWidth: 200, maxWidth: 280 });
    marker.on("dragstart", function () { circle.setStyle({ opacity: 0.2, fillOpacity: 0.03 }); });
    marker.on("dragend", function () {
      var ll = marker.getLatLng();
      var lon = ((ll.lng + 180) % 360 + 360) % 360 - 180;
      var one = {};
      one[e.rel] = { action: "move", lat: round(ll.lat), lon: round(lon) };
      decide({ decisions: one });
    });
    marker.on("click", function () { focus(e.rel, false); });
    layers[e.rel] = { marker: marker, circle: circle };
  }

  function round(x) { return Math.round(x * 1e7) / 1e7; }

  function redraw(rel) {
    var l = layers[rel];
    if (l) { pinLayer.removeLayer(l.marker); pinLayer.removeLayer(l.circle); delete layers[rel]; }
    if (entries[rel]) draw(entries[rel]);
  }

  function popup(e) {
    var box = el("div", "popup");
    var img = el("img", "popup-thumb");
    img.alt = e.rel;
    img.src = thumbUrl(e.rel, POPUP_THUMB_PX);
    box.appendChild(img);
    box.appendChild(el("div", "folder", e.rel.indexOf("/") < 0 ? "" : e.rel.slice(0, e.rel.lastIndexOf("/") + 1)));
    var li = el("div");
    li.appendChild(el("div", "info"));
    li.appendChild(el("div", "acts"));
    fillItem(li, e);
    li.className = "popup-body";
    box.appendChild(li);
    return box;
  }

  function fitTo(list) {
    var pts = list.map(position).filter(Boolean);
    if (!pts.length) return;
    var b = L.latLngBounds(pts);
    list.forEach(function (e) {
      var l = layers[e.rel];
      if (l && radiusKm(e) <= WIDE_KM) b.extend(l.circle.getBounds());
    });
    map.fitBounds(b.pad(0.15), { maxZoom: 15, animate: false });
  }

  function focus(rel, fromList) {
    document.querySelectorAll(".item.focused").forEach(function (x) { x.classList.remove("focused"); });
    var li = listItem(rel);
    if (li) {
      li.classList.add("focused");
      if (!fromList) li.scrollIntoView({ block: "nearest" });
    }
    var l = layers[rel];
    if (l && fromList) {
      map.setView(l.marker.getLatLng(), Math.max(map.getZoom(), 13), { animate: false });
      l.marker.openPopup();
    }
  }

  // ------------------------------------------------------------------ groups: select, move together

  function selectGroup(id) {
    selectedGroup = selectedGroup === id ? null : id;
    document.querySelectorAll(".group").forEach(function (s) {
      s.classList.toggle("selected", s.dataset.group === selectedGroup);
    });
    plan.entries.forEach(function (e) { if (layers[e.rel]) layers[e.rel].marker.setIcon(pinIcon(e)); });
    if (handle) { handle.remove(); handle = null; }
    if (!selectedGroup) return;
    var members = groupEntries(selectedGroup);
    fitTo(members);
    showHandle();
    setStatus("idle", "Group selected: drag its square to move all its placed photos by the same distance.");
  }

  function groupEntries(id) {
    var g = plan.groups.filter(function (x) { return x.id === id; })[0];
    return g ? g.rels.map(function (r) { return entries[r]; }).filter(Boolean) : [];
  }

  function showHandle() {
    var pts = groupEntries(selectedGroup).map(position).filter(Boolean);
    if (!pts.length) return;
    var lat = pts.reduce(function (a, p) { return a + p[0]; }, 0) / pts.length;
    var lon = pts.reduce(function (a, p) { return a + p[1]; }, 0) / pts.length;
    handle = L.marker([lat, lon], {
      icon: L.divIcon({ className: "group-handle", iconSize: [22, 22] }), draggable: true, zIndexOffset: 2000,
      title: "drag to move the whole group",
    }).addTo(map);
    handle.on("dragend", function () {
      var to = handle.getLatLng(), dLat = to.lat - lat, dLon = to.lng - lon;
      var many = {};
      groupEntries(selectedGroup).forEach(function (e) {
        var p = position(e);
        if (!p) return;
        var nlat = Math.max(-90, Math.min(90, p[0] + dLat));
        var nlon = ((p[1] + dLon + 180) % 360 + 360) % 360 - 180;
        many[e.rel] = { action: "move", lat: round(nlat), lon: round(nlon) };
      });
      decide({ decisions: many });
    });
  }

  // ------------------------------------------------------------------ decisions

  function decideOne(rel, action) {
    decide({ rels: [rel], action: action });
  }

  function startPlacing(rel) {
    placing = rel;
    document.body.classList.add("placing");
    setStatus("idle", "Click the map where " + baseName(rel) + " was taken (Esc to cancel).");
  }

  function mapClick(ev) {
    if (!placing) return;
    var rel = placing;
    placing = null;
    document.body.classList.remove("placing");
    var lon = ((ev.latlng.lng + 180) % 360 + 360) % 360 - 180;
    var one = {};
    one[rel] = { action: "move", lat: round(ev.latlng.lat), lon: round(lon) };
    decide({ decisions: one });
  }

  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape" && placing) {
      placing = null;
      document.body.classList.remove("placing");
      setStatus("idle", "Placing cancelled.");
    }
  });

  /** POST the decisions; on success redraw what changed, on error put everything back as the server has it. */
  function decide(body) {
    return api("api/library/decisions", body).then(function (res) {
      decisions = res.decisions || {};
      var changed = res.changed || [];
      changed.forEach(function (rel) {
        redraw(rel);
        var li = listItem(rel);
        if (li && entries[rel]) fillItem(li, entries[rel]);
      });
      if (handle) { handle.remove(); handle = null; showHandle(); }
      updateCounts();
      window.geopinLibrary.decisions = decisions;
      var words = changed.length + " photo" + (changed.length === 1 ? "" : "s") + " " +
        (body.action === "clear" ? "back to undecided" : body.action ? body.action + (body.action.slice(-1) === "e" ? "d" : "ed")
          : "moved") + "; saved.";
      if (res.skipped && res.skipped.length) words += " " + res.skipped.length + " unplaced left alone (nothing to accept).";
      setStatus("done", words);
      document.body.dataset.decided = String((Number(document.body.dataset.decided) || 0) + 1);
    }).catch(function (e) {
      setStatus("error", "Not saved: " + e.message);
      plan.entries.forEach(function (x) { redraw(x.rel); }); // a refused drag goes back where it was
    });
  }

  function updateCounts() {
    if (!plan) return;
    var n = { accept: 0, reject: 0, move: 0, none: 0 }, placedN = 0, written = 0, toWrite = 0;
    plan.entries.forEach(function (e) {
      var d = decisions[e.rel];
      n[d ? d.action : "none"]++;
      if (placed(e)) placedN++;
      if (e.written) written++;
      if (willWrite(e)) toWrite++;
    });
    var total = plan.entries.length;
    $("counts").textContent = total + " photos without GPS (" + placedN + " with a proposal, " + (total - placedN) +
      " unplaced) \u00b7 " + n.accept + " accepted \u00b7 " + n.move + " moved \u00b7 " + n.reject + " rejected \u00b7 " +
      n.none + " undecided \u00b7 " + written + " written on disk";
    var w = $("write");
    w.textContent = toWrite ? "Write " + toWrite + " position" + (toWrite === 1 ? "" : "s") : "Write";
    w.disabled = busy || !toWrite;
    $("undo").disabled = busy;
  }

  // ------------------------------------------------------------------ write and undo

  function runWords(r) {
    if (r.action === "undo") {
      if (!r.run_id && r.note) return "Undo: " + r.note + ".";
      var files = Array.isArray(r.restored) ? r.restored.length : r.restored;
      return "Undid run " + (r.run_id || r.run || "") + (files !== undefined ? ": " + files + " files restored" : "") +
        (r.note ? " (" + r.note + ")" : "") + ".";
    }
    var notWritten = (r.not_written || []).length, skipped = (r.skipped || []).length;
    return "Run " + r.run + ": " + (r.written || 0) + " written" + (r.unchanged ? ", " + r.unchanged + " unchanged" : "") +
      (skipped ? ", " + skipped + " skipped (" + r.skipped[0].rel + ": " + r.skipped[0].reason + (skipped > 1 ? ", …" : "") + ")" : "") +
      (notWritten ? "; " + notWritten + " not written (rejected or not reviewed)" : "") + ". Undo restores every file.";
  }

  function runBusy(on) {
    busy = on;
    updateCounts();
  }

  function write() {
    if (busy) return;
    runBusy(true);
    setStatus("busy", "Writing…");
    api("api/library/write", { include_undecided: $("include-undecided").checked })
      .then(function (r) {
        document.body.dataset.lastRun = r.run || "";
        return load(false).then(function () { setStatus("done", runWords(r)); });
      })
      .catch(function (e) { setStatus("error", "Write failed: " + e.message); })
      .then(function () { runBusy(false); });
  }

  function undo() {
    if (busy) return;
    runBusy(true);
    setStatus("busy", "Undoing the last write…");
    api("api/library/undo", {})
      .then(function (r) {
        document.body.dataset.lastUndo = String(r.run_id || r.run || "1");
        return load(false).then(function () { setStatus("done", runWords(r)); });
      })
      .catch(function (e) { setStatus("error", "Undo failed: " + e.message); })
      .then(function () { runBusy(false); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
