"""Research and operations tools over the services: demo, compare, bench, local swarms."""
