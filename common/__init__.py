"""What does not change between stages: data, reference weights, seeding, CLI options, tools."""
