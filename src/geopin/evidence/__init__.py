"""What the photo itself gives away beyond its pixels' features: text, scripts, place names, everyday cues.

Readers (ocr, script, gazetteer) turn a photo into a Reading; each source (one file each, registered in
registry) turns a Reading into Clues (base). The posterior (geopin.locate) weighs the clues.
"""
