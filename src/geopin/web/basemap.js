/* A world base map with no tile server: Leaflet + country borders from the shipped TopoJSON.
 * Shared by the page (index.html) and the evaluation report (report.html, which inlines it). */
(function () {
  "use strict";

  /** Make a Leaflet map in `el` showing the countries of `topology` (world-atlas TopoJSON). */
  function geopinBaseMap(el, topology) {
    var map = L.map(el, {
      worldCopyJump: false,
      minZoom: 1,
      maxZoom: 12,
      zoomSnap: 0.25,
      maxBounds: [[-90, -250], [90, 250]],
      maxBoundsViscosity: 0.8,
      preferCanvas: false,
    });
    map.fitBounds([[-58, -170], [78, 190]]); // a view first: layers added to a map without one fail to render
    map.attributionControl.setPrefix("Leaflet");
    map.attributionControl.addAttribution("borders: Natural Earth");
    map.createPane("countries").style.zIndex = 250;
    if (topology && window.topojson) {
      var countries = flatRings(topojson.feature(topology, topology.objects.countries));
      L.geoJSON(countries, {
        pane: "countries",
        interactive: false,
        style: function () {
          return { className: "country", color: "#7d8797", weight: 0.7, fillColor: "#fbfaf5", fillOpacity: 1 };
        },
      }).addTo(map);
    }
    // graticule every 30 degrees: orientation when zoomed in on the sea
    var lines = [];
    for (var lat = -60; lat <= 60; lat += 30) lines.push([[lat, -180], [lat, 180]]);
    for (var lon = -180; lon <= 180; lon += 30) lines.push([[-85, lon], [85, lon]]);
    L.polyline(lines, { pane: "countries", interactive: false, color: "#9fb8cc", weight: 0.5, dashArray: "2 4", className: "graticule" }).addTo(map);
    return map;
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

  window.geopinBaseMap = geopinBaseMap;
  window.geopinHaversineKm = haversineKm;
})();
