/* A world base map with no tile server: Leaflet + country borders from the shipped TopoJSON.
 * Shared by the page (index.html) and the evaluation report (report.html, which inlines it). */
(function () {
  "use strict";

  /** Longitudes the map can be panned over: three copies of the world, so that a place near the
   * antimeridian can be looked at with both its sides on screen (Fiji, Kamchatka, Alaska). */
  var PAN_LON = 540;
  var COPIES = [-360, 0, 360];

  /** Make a Leaflet map in `el` showing the countries of `topology` (world-atlas TopoJSON).
   * Longitudes are continuous: the world is drawn at -360, 0 and +360, so what lies past 180 degrees
   * (an answer drawn the short way across the antimeridian) has land under it and can be panned to. */
  function geopinBaseMap(el, topology) {
    var map = L.map(el, {
      worldCopyJump: false,
      minZoom: 1,
      maxZoom: 12,
      zoomSnap: 0.25,
      maxBounds: [[-90, -PAN_LON], [90, PAN_LON]],
      maxBoundsViscosity: 0.8,
      preferCanvas: false,
    });
    map.fitBounds([[-58, -170], [78, 190]]); // a view first: layers added to a map without one fail to render
    map.attributionControl.setPrefix("Leaflet");
    map.attributionControl.addAttribution("borders: Natural Earth");
    map.createPane("countries").style.zIndex = 250;
    L.control.scale({ position: "bottomleft", maxWidth: 140 }).addTo(map);
    if (topology && window.topojson) {
      var countries = flatRings(topojson.feature(topology, topology.objects.countries));
      COPIES.forEach(function (offset) {
        L.geoJSON(shifted(countries, offset), {
          pane: "countries",
          interactive: false,
          offset: offset, // which copy of the world: for tests and the console
          style: function () {
            return { className: offset ? "country country-copy" : "country", color: "#7d8797", weight: 0.7,
              fillColor: "#fbfaf5", fillOpacity: 1 };
          },
        }).addTo(map);
      });
    }
    // graticule every 30 degrees: orientation when zoomed in on the sea
    var lines = [];
    for (var lat = -60; lat <= 60; lat += 30) lines.push([[lat, -PAN_LON], [lat, PAN_LON]]);
    for (var lon = -PAN_LON; lon <= PAN_LON; lon += 30) lines.push([[-85, lon], [85, lon]]);
    L.polyline(lines, { pane: "countries", interactive: false, color: "#9fb8cc", weight: 0.5, dashArray: "2 4", className: "graticule" }).addTo(map);
    return map;
  }

  /** A copy of a FeatureCollection of (Multi)Polygons moved by `offset` degrees of longitude. */
  function shifted(fc, offset) {
    if (!offset) return fc;
    function ring(r) { return r.map(function (p) { return [p[0] + offset, p[1]]; }); }
    return {
      type: "FeatureCollection",
      features: fc.features.map(function (f) {
        var g = f.geometry;
        if (!g) return f;
        var c = g.type === "Polygon" ? g.coordinates.map(ring)
          : g.type === "MultiPolygon" ? g.coordinates.map(function (poly) { return poly.map(ring); }) : g.coordinates;
        return { type: "Feature", properties: f.properties, geometry: { type: g.type, coordinates: c } };
      }),
    };
  }

  /** `lon` moved by whole turns to lie within 180 degrees of `ref`: the short way from ref to lon. */
  function nearLon(lon, ref) {
    return lon + 360 * Math.round((ref - lon) / 360);
  }

  /** World-atlas rings live on the sphere: Russia and Fiji cross the antimeridian, Antarctica winds
   * around the South Pole. Drawn as they are on a flat map, their 180 -> -180 edges cut bands across
   * the world. Make each ring continuous in longitude; close a ring that winds around a pole over it. */
  function flatRing(ring) {
    var out = [[ring[0][0], ring[0][1]]];
    for (var i = 1; i < ring.length; i++) {
      var lon = ring[i][0], prev = out[i - 1][0];
      lon += 360 * Math.round((prev - lon) / 360);
      out.push([lon, ring[i][1]]);
    }
    var turn = out[out.length - 1][0] - out[0][0];
    if (Math.abs(turn) > 180) { // winds around a pole (the ring is closed: first and last point are one place)
      var lat = out.reduce(function (a, p) { return a + p[1]; }, 0) > 0 ? 90 : -90;
      var lo = Math.min.apply(null, out.map(function (p) { return p[0]; }));
      out = out.map(function (p) { return [p[0] - 180 - lo, p[1]]; }); // onto [-180, 180]
      out.push([out[out.length - 1][0], lat], [out[0][0], lat], out[0].slice());
      return out;
    }
    var mid = out.reduce(function (a, p) { return a + p[0]; }, 0) / out.length;
    var shift = mid > 180 ? -360 : mid < -180 ? 360 : 0;
    return shift ? out.map(function (p) { return [p[0] + shift, p[1]]; }) : out;
  }

  function flatRings(fc) {
    fc.features.forEach(function (f) {
      var g = f.geometry;
      if (!g) return;
      if (g.type === "Polygon") g.coordinates = g.coordinates.map(flatRing);
      else if (g.type === "MultiPolygon") g.coordinates = g.coordinates.map(function (poly) { return poly.map(flatRing); });
    });
    return fc;
  }

  /** Great-circle distance in km (the same haversine as geopin.geo, Earth radius 6371.0088 km). */
  function haversineKm(lat1, lon1, lat2, lon2) {
    var r = Math.PI / 180;
    var a = Math.pow(Math.sin(((lat2 - lat1) * r) / 2), 2) +
      Math.cos(lat1 * r) * Math.cos(lat2 * r) * Math.pow(Math.sin(((lon2 - lon1) * r) / 2), 2);
    return 2 * 6371.0088 * Math.asin(Math.min(1, Math.sqrt(a)));
  }

  /** The shipped country borders (a promise of the TopoJSON, or of null when they did not load, after
   * `onError(message)` was told why): the pages draw the map either way. */
  function geopinLoadBorders(onError) {
    return fetch("vendor/world-atlas/countries-50m.json")
      .then(function (r) {
        if (!r.ok) throw new Error("country borders: HTTP " + r.status);
        return r.json();
      })
      .catch(function (e) {
        onError("The country borders did not load (" + e.message + "); the map is blank.");
        return null;
      });
  }

  window.geopinBaseMap = geopinBaseMap;
  window.geopinLoadBorders = geopinLoadBorders;
  window.geopinNearLon = nearLon;
  window.geopinPanLon = PAN_LON;
  window.geopinHaversineKm = haversineKm;
})();
