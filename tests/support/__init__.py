"""What several test modules share: fleets, daemons, receivers, the leak sweep."""
