"""Great Expectations suites of study 3's datasets: the fictional graph and the real-world queries."""
