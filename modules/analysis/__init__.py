"""Study analyses: the data generators, models and engine put together to answer one study's questions."""
