"""Pure domain types: statuses and the messages that cross process boundaries."""
