"""Models and checks for testing the method without pretrained weights; the core never imports this package."""
