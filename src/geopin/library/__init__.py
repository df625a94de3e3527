"""Geotag a photo library: place the photos without GPS from time, GPX tracks, the library's own geotagged
photos and the visual model, and write the answers where photo tools read them (docs/tag.md)."""
