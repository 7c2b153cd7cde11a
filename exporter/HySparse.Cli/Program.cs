using HySparse.Cli;

return CliApp.Run(args, Console.Out, Console.Error);
