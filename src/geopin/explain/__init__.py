"""What gave the place away: saliency maps and characteristic crops."""
