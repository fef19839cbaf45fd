module github.com/ferrydr/ferry

go 1.26.0
