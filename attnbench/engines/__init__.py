"""HOW: engines that know nothing of which pattern feeds them."""
