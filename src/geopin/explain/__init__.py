"""What gave the place away: saliency maps for one photo (maps: gradcam, occlusion) and characteristic crops per country (characterize)."""
